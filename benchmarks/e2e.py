"""End-to-end decode throughput of what users run: `GenerationEngine.generate` (as the Ray actor
and the server call it) with RetroInfer and the KV store in its own process, against full
attention through the same engine, in the same run.

    python -m benchmarks.e2e [--contexts 32768 122880] [--queries correlated model]

Llama-3.1-8B geometry with RANDOM bf16 weights (no 8B weights are available offline): the
generated text is meaningless and random weights give queries with no locality, so
`--queries correlated` replaces each RetroInfer step's queries with the correlated stream of
`query_stream` (q_t = rho q_(t-1) + sqrt(1 - rho^2) noise, per layer, inside the captured step;
rho 0.944 gave a hit ratio near 0.79 at 128K x 16 in the attention benchmark) and labels the
rows so; `--queries model` keeps the model's own (random-weight) queries.
Rows per context:
- full attention at the largest batch that fits the GPU (the same engine, CUDA graphs);
- RetroInfer, the product: `python -m kvstore_server` as a separate process, the engine's
  same-host shared-memory link (misses read over PCIe from the store's arena);
- RetroInfer, in-process link with the K/V in pinned host memory (the reference path: the same
  placement without a store process).
Tokens/s counts every decoded token of the batch over the decode time (prefill excluded); miss
GB/s is the K/V of the missed clusters over the decode time; store GiB the store process's RSS.
Writes JSON (benchmarks/results/e2e_<device>.json) after every row and prints a table.
`--device cpu --model random-tiny` is the smoke run the tests make (no full-attention fit on CPU:
its row runs at the RetroInfer batch).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.random_model import RANDOM_MODELS, random_engine
from benchmarks.store import start
from inference_worker.engine import (
    EngineConfig,
    GenerationEngine,
    GenerationRequest,
    StoreLink,
    connect_store,
)
from inference_worker.engine.store_link import InProcessStoreLink
from inference_worker.retroinfer import RetroInferConfig, StepOptions

log = logging.getLogger("benchmarks.e2e")
RESULTS = Path(__file__).resolve().parent / "results"


class CorrelatedQueries:
    """A query_transform: per layer, q_t = rho q_(t-1) + sqrt(1 - rho^2) noise (device ops, so
    it runs inside a captured step), noise scaled like the model's queries."""

    def __init__(self, rho: float) -> None:
        self.rho, self.keep = rho, math.sqrt(1.0 - rho**2)
        self.last: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, q: torch.Tensor) -> torch.Tensor:  # q [R, G, D]
        last = self.last.get(layer)
        if last is None or last.shape != q.shape:
            last = self.last[layer] = torch.randn_like(q, dtype=torch.float32)
        last.mul_(self.rho).add_(torch.randn_like(last), alpha=self.keep)
        return last.to(q.dtype)


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result: dict[str, object] = {
        "device": name,
        "model": f"{args.model}: {_geometry(args.model)}, RANDOM weights",
        "steps": args.steps,
        "rho": args.rho,
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    engine = random_engine(args.model, device)
    with store_process(args.capacity) as (target, pid):
        for context in args.contexts:
            for row in _context_rows(engine, target, context, args):
                if row.get("path", "").startswith("store"):  # type: ignore[attr-defined]
                    row["store_rss_gib"] = _rss_gib(pid)
                result["rows"].append(row)  # type: ignore[attr-defined]
                log.info("%s", row)
                out.write_text(json.dumps(result, indent=2))
    _print(result)
    log.info("wrote %s", out)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="*", default=[32768, 122880])
    p.add_argument("--batches", type=int, nargs="*", default=None,
                   help="RetroInfer batches (default: what host memory holds, <= 16)")  # fmt: skip
    p.add_argument("--steps", type=int, default=24, help="decoded tokens per request")
    p.add_argument("--queries", nargs="*", choices=("correlated", "model"),
                   default=["correlated", "model"])  # fmt: skip
    p.add_argument("--rho", type=float, default=0.944)
    p.add_argument("--capacity", default="110GiB", help="the store's --capacity-bytes")
    p.add_argument("--host-gib", type=float, default=110.0, help="host memory for the KV")
    p.add_argument("--skip-full", action="store_true", help="no full-attention rows")
    p.add_argument("--skip-in-process", action="store_true")
    p.add_argument("--model", default="random-llama8b", choices=sorted(RANDOM_MODELS))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--out", default=None, help="default: benchmarks/results/e2e_<device>.json")
    args = p.parse_args()
    args.out = args.out or str(RESULTS / f"e2e_{args.device}.json")
    return args


def _geometry(model: str) -> str:
    c = RANDOM_MODELS[model]
    return (f"{c.num_layers} layers, {c.num_heads} q / {c.num_kv_heads} kv heads, "
            f"head_dim {c.head_dim}, hidden {c.hidden_size}")  # fmt: skip


def _kv_bytes_per_token(engine: GenerationEngine) -> int:
    """K and V of every layer, in the engine's dtype."""
    c = engine.loaded.config
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * engine.loaded.dtype.itemsize


def _context_rows(
    engine: GenerationEngine, target: str, context: int, args: argparse.Namespace
) -> Iterator[dict[str, object]]:
    prompt = context - args.steps
    fits_host = int(args.host_gib * 2**30 // (context * _kv_bytes_per_token(engine)))
    batches = args.batches or [b for b in (1, 2, 4, 6, 8, 16) if b <= fits_host]
    if not args.skip_full:
        yield _full_row(engine, prompt, args.steps, max(batches))
    for queries in args.queries:
        for batch in batches:
            link = connect_store(target, namespace="e2e", same_host="require")
            try:
                yield _retro_row(engine, link, "store process, shm", prompt, batch, queries, args)
            finally:
                link.close()
            if not args.skip_in_process:
                reference = InProcessStoreLink(host_memory=True)
                label = "in-process link, pinned host"
                yield _retro_row(engine, reference, label, prompt, batch, queries, args)


def _full_row(
    engine: GenerationEngine, prompt: int, steps: int, cpu_batch: int
) -> dict[str, object]:
    """Full attention at the largest batch whose KV fits the GPU beside the weights."""
    batch = cpu_batch
    if engine.device.type == "cuda":
        free = torch.cuda.mem_get_info()[0] - 6 * 2**30  # activations, graphs, logits
        batch = int(free // ((prompt + steps) * _kv_bytes_per_token(engine)))
    row: dict[str, object] = {"attention": "full", "context": prompt + steps, "batch": batch}
    if batch < 1:
        return row | {"skipped": "the KV cache of one sequence does not fit the GPU"}
    config = EngineConfig(attention="full", max_batch_size=batch, prefill_chunk=4096)
    return row | _run(engine.with_config(config), prompt, batch, steps)


def _retro_row(
    engine: GenerationEngine,
    link: StoreLink,
    path: str,
    prompt: int,
    batch: int,
    queries: str,
    args: argparse.Namespace,
) -> dict[str, object]:
    transform = CorrelatedQueries(args.rho) if queries == "correlated" else None
    config = EngineConfig(
        retro=RetroInferConfig(), max_batch_size=batch, prefill_chunk=4096,
        step_options=StepOptions(query_transform=transform),
    )  # fmt: skip
    row = {"attention": "retroinfer", "path": path, "queries": queries,
           "context": prompt + args.steps, "batch": batch}  # fmt: skip
    try:
        return row | _run(engine.with_config(config, link), prompt, batch, args.steps)
    except (RuntimeError, MemoryError) as err:  # out of memory: report, go on
        log.warning("%s failed: %s", row, err)
        torch.cuda.empty_cache()
        return row | {"error": str(err)[:300]}


def _run(engine: GenerationEngine, prompt: int, batch: int, steps: int) -> dict[str, object]:
    """`batch` requests of `prompt` random tokens, `steps` tokens each, through generate()."""
    gen = torch.Generator().manual_seed(prompt + batch)
    vocab = engine.loaded.config.vocab_size
    cuda = engine.device.type == "cuda"
    requests = [
        GenerationRequest(f"r{i}", torch.randint(vocab, (prompt,), generator=gen).tolist(), steps)
        for i in range(batch)
    ]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - t0
    stats = [r.stats for r in results]
    decode_s = max(float(s["decode_s"]) for s in stats)  # type: ignore[arg-type]
    decoded = sum(int(s["decode_steps"]) for s in stats)  # type: ignore[call-overload]
    out: dict[str, object] = {
        "tokens_per_s": round(decoded / decode_s, 2),
        "ms_per_step": round(decode_s / max(steps - 1, 1) * 1e3, 2),
        "prefill_s": round(sum(float(s["prefill_s"]) for s in stats), 1),  # type: ignore[arg-type]
        "wall_s": round(wall, 1),
        "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else 0.0,
    }
    if stats[0]["indexed"]:
        misses = sum(int(s["misses"]) for s in stats)  # type: ignore[call-overload]
        out["miss_gb_per_s"] = round(misses * _cluster_bytes(engine, stats[0]) / decode_s / 1e9, 2)
        out["hit_ratio"] = round(sum(float(s["hit_ratio"]) for s in stats) / len(stats), 3)  # type: ignore[arg-type]
        out["misses_per_step"] = round(misses / max(decoded, 1), 1)
    del engine
    torch.cuda.empty_cache()
    return out


def _cluster_bytes(engine: GenerationEngine, stats: dict[str, object]) -> float:
    """K and V bytes of an average cluster (the indexed tokens over the clusters)."""
    c, retro = engine.loaded.config, RetroInferConfig()
    indexed = int(stats["prompt_tokens"]) - retro.sink_tokens - retro.window_tokens  # type: ignore[call-overload]
    tokens = indexed / max(int(stats["num_clusters"]), 1)  # type: ignore[call-overload]
    return 2 * tokens * c.head_dim * engine.loaded.dtype.itemsize


def _rss_gib(pid: int) -> float:
    """Resident memory of a process (its touched shared-memory arena pages included)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return 0.0


@contextmanager
def store_process(capacity: str) -> Iterator[tuple[str, int]]:
    """`python -m kvstore_server` on 127.0.0.1 (a free port), shared memory on."""
    cmd = [sys.executable, "-m", "kvstore_server", "--port", "0", "--log-format", "json",
           "--capacity-bytes", capacity]  # fmt: skip
    proc, doc = start(cmd, "stderr")
    try:
        yield f"127.0.0.1:{doc['port']}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _print(result: dict[str, object]) -> None:
    head = f"\nEnd-to-end decode, {result['device']}, {result['model']}; correlated = "
    print(head + f"synthetic queries (rho {result['rho']}), model = the model's own queries")
    print(f"{'attention':>10} {'path':>28} {'queries':>10} {'context':>8} {'batch':>5} "
          f"{'tok/s':>8} {'ms/step':>8} {'hit':>6} {'miss GB/s':>9} {'GPU GiB':>8} "
          f"{'store GiB':>9}  note")  # fmt: skip
    for row in result["rows"]:  # type: ignore[attr-defined]
        note = row.get("skipped") or row.get("error") or ""
        print(f"{row['attention']:>10} {row.get('path', '-'):>28} {row.get('queries', '-'):>10} "
              f"{row['context']:>8} {row['batch']:>5} {row.get('tokens_per_s', '-'):>8} "
              f"{row.get('ms_per_step', '-'):>8} {row.get('hit_ratio', '-'):>6} "
              f"{row.get('miss_gb_per_s', '-'):>9} {row.get('gpu_peak_gib', '-'):>8} "
              f"{row.get('store_rss_gib', '-'):>9}  {note}")  # fmt: skip


if __name__ == "__main__":
    main()
