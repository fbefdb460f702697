"""End-to-end decode throughput with the KV store in a separate process vs in this process.

`python -m benchmarks.store_decode [--prompt 4096] [--new 64] [--batches 1 4]`

The default model (SmolLM2-135M) generates with RetroInfer attention; only where the clustered
KV lives and how misses travel change between rows (same run, same prompts):
- in-process link: InProcessStoreLink (no store; misses gathered on the device);
- same process, shm / grpc: an EmbeddedStore (gRPC server on a thread of this process),
  GrpcStoreLink with the shared-memory data plane, or streaming over loopback;
- separate process, shm / grpc: `python -m kvstore_server` as its own process.
Tokens/s counts every generated token of the batch over the decode time (prefill excluded).
`--model random-smollm2` / `random-llama8b` use RANDOM bf16 weights of that architecture (for
hosts without the GGUF file): throughput only, the generated text is meaningless.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.random_model import RANDOM_MODELS, random_engine
from benchmarks.store import device_name as cpu_name
from benchmarks.store import start
from client import ClientOptions, KVStoreClient
from inference_worker.engine import EngineConfig, GenerationEngine, GenerationRequest, GrpcStoreLink
from inference_worker.engine.store_link import InProcessStoreLink, StoreLink
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings

log = logging.getLogger("benchmarks.store_decode")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class Row:
    mode: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    decode_s: float
    tokens_per_s: float
    vs_in_process_link: float
    vs_same_process_store: float | None
    fetch_rpcs: int
    fetched_mb: float
    hit_ratio: float


@contextmanager
def separate_process() -> Iterator[str]:
    cmd = [sys.executable, "-m", "kvstore_server", "--port", "0", "--log-format", "json"]
    proc, doc = start(cmd, "stderr")
    try:
        yield f"127.0.0.1:{doc['port']}"
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def same_process() -> Iterator[str]:
    settings = ServerSettings(port=0, log_format="text", log_level="WARNING")
    with EmbeddedStore(settings) as server:
        yield server.target


@contextmanager
def no_store() -> Iterator[str]:
    yield ""


MODES: dict[str, tuple[Callable[[], AbstractContextManager[str]], str]] = {
    "in-process link": (no_store, ""),
    "same process, shm": (same_process, "require"),
    "same process, grpc": (same_process, "off"),
    "separate process, shm": (separate_process, "require"),
    "separate process, grpc": (separate_process, "off"),
}


def run_mode(
    engine: GenerationEngine, mode: str, prompt: list[int], batch: int, new: int
) -> dict[str, object]:
    server, same_host = MODES[mode]
    with server() as target:
        link: StoreLink = (
            InProcessStoreLink()
            if not target
            else GrpcStoreLink(
                KVStoreClient(target, ClientOptions(namespace="e2e", timeout_s=120)), same_host
            )
        )
        try:
            warm = [GenerationRequest(f"w{i}", prompt, max_new_tokens=4) for i in range(batch)]
            runner = engine.with_config(EngineConfig(max_batch_size=batch), link)
            runner.generate(warm)
            reqs = [GenerationRequest(f"r{i}", prompt, max_new_tokens=new) for i in range(batch)]
            results = runner.generate(reqs)
        finally:
            link.close()
    return results[0].stats


def bench(engine: GenerationEngine, prompt: list[int], batch: int, new: int) -> list[Row]:
    stats = {mode: run_mode(engine, mode, prompt, batch, new) for mode in MODES}
    rows = []
    base = batch * new / float(stats["in-process link"]["decode_s"])  # type: ignore[arg-type]
    for mode, s in stats.items():
        tps = batch * new / float(s["decode_s"])  # type: ignore[arg-type]
        twin = mode.replace("separate process", "same process")
        same = (
            tps / (batch * new / float(stats[twin]["decode_s"]))  # type: ignore[arg-type]
            if mode.startswith("separate")
            else None
        )
        rows.append(
            Row(
                mode,
                batch,
                len(prompt),
                new,
                float(s["decode_s"]),  # type: ignore[arg-type]
                tps,
                tps / base,
                same,
                int(s.get("store_fetch_rpcs", 0)),  # type: ignore[call-overload]
                int(s.get("store_fetched_bytes", 0)) / 1e6,  # type: ignore[call-overload]
                float(s.get("hit_ratio", 0.0)),  # type: ignore[arg-type]
            )
        )
    return rows


def print_table(rows: list[Row], device: str) -> None:
    print(f"end-to-end decode, RetroInfer, {device}")
    print(
        "| batch | prompt | new | mode | decode s | tokens/s | vs in-process link | "
        "separate / same process | fetch RPCs | fetched MB | hit ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = "" if r.vs_same_process_store is None else f"{r.vs_same_process_store:.3f}"
        print(
            f"| {r.batch} | {r.prompt_tokens} | {r.new_tokens} | {r.mode} | {r.decode_s:.2f} | "
            f"{r.tokens_per_s:.1f} | {r.vs_in_process_link:.3f} | {same} | {r.fetch_rpcs} | "
            f"{r.fetched_mb:.1f} | {r.hit_ratio:.3f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompt", type=int, default=4096)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--device", default=None)
    p.add_argument("--model", default="default", choices=["default", *RANDOM_MODELS])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if args.model == "default":
        engine = GenerationEngine.load(device=args.device)
    else:
        dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        engine = random_engine(args.model, torch.device(dev))
    device = engine.device
    name = cpu_name()
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} + {name}"
    vocab = engine.loaded.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, vocab, (args.prompt,), generator=gen).tolist()
    rows: list[Row] = []
    for batch in args.batches:
        rows += bench(engine, prompt, batch, args.new)
        print_table(rows, f"{args.model} model, {name}")
    out = args.out or RESULTS / f"store_decode_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"device": name, "model": args.model, "rows": [asdict(r) for r in rows]}, indent=1
        )
    )
    log.warning("wrote %s", out)


if __name__ == "__main__":
    main()
