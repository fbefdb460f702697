"""End-to-end decode throughput: Llama-3.1-8B architecture, random bf16 weights, one GPU.

    python -m benchmarks.decode_e2e [--contexts 32768 122880] [--steps 8]

SYNTHESIZED PREFILL STATE: no prompt is run. Full attention gets a random dense KV cache;
RetroInfer gets random K/V per layer, clustered for real (the same wave-index build as after a
real prefill) with the cluster-major K/V in an in-process store in pinned host memory on the
same host (misses are read zero-copy over PCIe by the gather kernel). Random weights and random
K/V make decode queries unrelated from step to step: the wave-buffer hit ratio is a worst case.

Full attention: GraphedDecoder (whole step in one CUDA graph) at the largest batch that fits.
RetroInfer (eager model): the model eager, each layer's RetroInfer step replayed from its own
CUDA graph. RetroInfer (graphed): the whole decode step (model + every layer's fixed-width
RetroInfer step) replayed from one CUDA graph (GraphedRetroDecoder), same layers, same run.
Time breakdown: `model` = the same model with a zero-cost attention backend; the RetroInfer
attention share = total - model; inside it, kernel time by kind from a profiled eager step.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from inference_worker.model import (
    AttentionMetadata,
    CausalLM,
    FullAttentionBackend,
    GraphedDecoder,
    ModelConfig,
    build_model,
)
from inference_worker.model.retro_graph import GraphedRetroDecoder
from inference_worker.retroinfer import InProcessClusterSource, RetroInferConfig, RetroInferLayer

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
LLAMA_8B = ModelConfig(
    family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
    num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
    max_position_embeddings=131072,
)  # fmt: skip
KINDS = {  # kernel-name fragment -> share of the RetroInfer attention time
    "ranking": ("logits_kernel", "select_kernel"),
    "attention+estimation": ("decode_kernel", "combine_kernel"),
    "gather (store->GPU, cache admission)": ("copy_runs_kernel",),
}


def random_model(device: torch.device) -> CausalLM:
    with torch.device("meta"):
        shell = CausalLM(LLAMA_8B)
    gen = torch.Generator(device=device).manual_seed(0)
    state = {}
    for name, p in shell.state_dict().items():
        if "norm" in name:
            state[name] = torch.ones(p.shape, dtype=torch.bfloat16, device=device)
        else:
            w = torch.empty(p.shape, dtype=torch.bfloat16, device=device)
            state[name] = w.normal_(0.0, 0.02, generator=gen)
    return build_model(LLAMA_8B, state, device)


class _NoAttention:
    """Zero-cost backend: returns q (the model's own time)."""

    def decode(self, layer, q, k, v, meta):
        return q

    prefill = decode


class _RetroBackend:
    def __init__(self, layers: list[RetroInferLayer]) -> None:
        self.layers = layers
        self.counts: list[dict[str, torch.Tensor]] = []

    def decode(self, layer, q, k, v, meta):
        out, stats = self.layers[layer].decode(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        self.counts.append(stats.counts)
        return out.unsqueeze(2)


def _loop(model: CausalLM, backend: object, batch: int, start: int, steps: int) -> float:
    """Seconds per eager decode step (model forward, greedy next token)."""
    dev = model.device
    tokens = torch.randint(0, LLAMA_8B.vocab_size, (batch, 1), device=dev)
    times = []
    for i in range(steps + 2):
        meta = AttentionMetadata.decode([start + i] * batch, dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(tokens, meta, backend, last_only=True)  # type: ignore[arg-type]
        tokens = logits.argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sum(times[2:]) / steps


@torch.inference_mode()
def full_attention(model: CausalLM, context: int, batches: list[int], steps: int) -> dict:
    for batch in sorted(batches, reverse=True):
        try:
            backend = FullAttentionBackend.for_model(
                LLAMA_8B, batch, context + steps + 8, torch.bfloat16, model.device, True
            )
            backend.k_cache.normal_()
            backend.v_cache.normal_()
            dec = GraphedDecoder(model, backend, batch)
            tokens = torch.randint(0, LLAMA_8B.vocab_size, (batch,), device=model.device)
            for i in range(2):
                tokens = dec.step(tokens, [context + i] * batch).argmax(-1)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(steps):
                tokens = dec.step(tokens, [context + 2 + i] * batch).argmax(-1)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / steps
            del dec, backend
            torch.cuda.empty_cache()
            return {"batch": batch, "step_ms": round(dt * 1e3, 2), "tokens_per_s": batch / dt}
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    return {"skipped": "no batch fits"}


@torch.inference_mode()
def retroinfer(model: CausalLM, context: int, batch: int, steps: int) -> dict:
    dev, c = model.device, LLAMA_8B
    ids = [f"s{b}" for b in range(batch)]
    source = InProcessClusterSource()
    layers = []
    t0 = time.perf_counter()
    for i in range(c.num_layers):  # synthesized prefill: random K/V, real clustering
        layer = RetroInferLayer(
            RetroInferConfig(), i, c.num_heads, c.num_kv_heads, c.head_dim, source, ids,
            dtype=torch.bfloat16, device=dev, on_segment=lambda s: _to_host(source, ids, s),
        )  # fmt: skip
        kv = torch.randn(2, batch, c.num_kv_heads, context, c.head_dim, device=dev).bfloat16()
        layer.prefill(kv[0], kv[1])
        del kv
        layers.append(layer)
    build_s = time.perf_counter() - t0
    backend = _RetroBackend(layers)
    step_s = _loop(model, backend, batch, context, steps)
    counts = backend.counts[-c.num_layers * steps :]
    hits = sum(int(x["hits"]) for x in counts)
    misses = sum(int(x["misses"]) for x in counts)
    try:
        graphed = _graphed_loop(model, layers, batch, context + steps + 2, steps)
    except RuntimeError as err:  # report it; the other rows of the run still count
        log.exception("graphed RetroInfer decode failed")
        graphed = {"error": str(err)}
    model_s = _loop(model, _NoAttention(), batch, context, steps)
    kinds = _profile_kinds(model, layers, batch, context + steps + 2)
    return {
        "batch": batch,
        "step_ms": round(step_s * 1e3, 2),
        "tokens_per_s": batch / step_s,
        "graphed": graphed,
        "model_ms": round(model_s * 1e3, 2),
        "retro_attention_ms": round((step_s - model_s) * 1e3, 2),
        "attention_kernel_ms_by_kind (eager profiled step, all layers)": kinds,
        "hit_ratio": round(hits / max(hits + misses, 1), 3),
        "setup_s (index build + pinning)": round(build_s, 1),
        "clusters_per_head": layers[0].num_clusters,
    }


def _graphed_loop(model: CausalLM, layers: list, batch: int, start: int, steps: int) -> dict:
    """The whole step from one CUDA graph; timed as _loop (synchronised per step)."""
    dec = GraphedRetroDecoder(model, layers)
    tokens = torch.randint(0, LLAMA_8B.vocab_size, (batch,), device=model.device)
    times, counts = [], []
    for i in range(steps + 2):  # step 0 captures the graph
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits, stats = dec.step(tokens, [start + i] * batch)
        tokens = logits.argmax(-1)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        counts += [s.counts for s in stats] if i >= 2 else []
    step_s = sum(times[2:]) / steps
    hits = sum(int(x["hits"]) for x in counts)
    misses = sum(int(x["misses"]) for x in counts)
    out = {
        "step_ms": round(step_s * 1e3, 2),
        "tokens_per_s": batch / step_s,
        "first_step_ms (warm-up + capture)": round(times[0] * 1e3, 1),
        "hit_ratio": round(hits / max(hits + misses, 1), 3),
        "captures": dec.captures,
        "eager_steps": dec.eager_steps,
    }
    del dec
    torch.cuda.empty_cache()
    return out


def _to_host(source: InProcessClusterSource, ids: list[str], segment) -> None:
    segment.keys = segment.keys.cpu().pin_memory()
    segment.values = segment.values.cpu().pin_memory()
    source.put(ids, segment)


def _profile_kinds(model: CausalLM, layers: list, batch: int, start: int) -> dict:
    for layer in layers:
        layer.use_cuda_graph, layer._graph = False, None
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        _loop(model, _RetroBackend(layers), batch, start, 1)
    out = dict.fromkeys([*KINDS, "other retro bookkeeping + model"], 0.0)
    for ev in prof.key_averages():
        t = ev.device_time_total / 1e3 / 3  # 3 steps ran inside _loop(steps=1)
        kind = next((k for k, frags in KINDS.items() if any(f in ev.key for f in frags)), None)
        out[kind or "other retro bookkeeping + model"] += t
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="*", default=[32768, 122880])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--retro-batch", type=int, nargs="*", default=None)
    p.add_argument("--out", default=str(RESULTS / "decode_e2e_cuda.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = random_model(torch.device("cuda"))
    rows = []
    for i, ctx in enumerate(args.contexts):
        full = full_attention(model, ctx, [1, 2, 3, 4] if ctx > 65536 else [4, 8, 12, 16], 8)
        log.info("full %d: %s", ctx, full)
        rb = (args.retro_batch or [])[i : i + 1] or [4 if ctx > 65536 else 8]
        retro = retroinfer(model, ctx, rb[0], args.steps)
        log.info("retro %d: %s", ctx, retro)
        full_tps = full.get("tokens_per_s")
        speed = retro["tokens_per_s"] / full_tps if full_tps else None
        graphed_tps = retro["graphed"].get("tokens_per_s")
        graphed = graphed_tps / full_tps if full_tps and graphed_tps else None
        row = {"context": ctx, "full": full, "retroinfer": retro, "speedup": speed}
        rows.append({**row, "speedup_graphed": graphed})
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()  # give the pinned store memory back
        result = {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "rows": rows,
            "note": "synthesized prefill state (random KV, real clustering), random weights",
        }
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"\nEnd-to-end decode, Llama-3.1-8B arch, random bf16 weights, {result['device']}")
    for r in rows:
        print(json.dumps(r, default=str))
    _print_table(rows)


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'context':>8} {'path':<34} {'batch':>5} {'ms/step':>8} {'tok/s':>7} {'vs full':>7}")
    for r in rows:
        full, retro = r["full"], r["retroinfer"]
        lines = [
            ("full attention (one CUDA graph)", full, 1.0 if "step_ms" in full else None),
            ("RetroInfer, eager model", retro, r["speedup"]),
            ("RetroInfer, whole step graphed", retro["graphed"], r["speedup_graphed"]),
        ]
        for name, d, vs in lines:
            if "step_ms" not in d:
                continue
            batch = d.get("batch", retro["batch"])
            ratio = f"{vs:.2f}x" if vs is not None else "-"
            tps = d["tokens_per_s"]
            print(
                f"{r['context']:>8} {name:<34} {batch:>5} {d['step_ms']:>8} {tps:>7.1f} {ratio:>7}"
            )


if __name__ == "__main__":
    main()
