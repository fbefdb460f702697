"""Per-layer decode attention: RetroInfer vs torch SDPA (same run), plus index build time.

    python -m inference_worker.benchmarks.attention            # Llama-3.1-8B geometry, GPU sizes
    python -m inference_worker.benchmarks.attention --quick    # small CPU-friendly setting

Writes JSON to inference_worker/benchmarks/results/ (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from inference_worker.retroinfer import InProcessClusterSource, RetroInferConfig, RetroInferLayer
from inference_worker.retroinfer.kernels import kernels_available

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3.1-8B attention geometry
RETRO_PEAK_FACTOR = 6.0  # peak memory of an index build / decode setup, in units of the KV size
_PROFILE = False


def main() -> None:
    global _PROFILE
    args = _parse()
    _PROFILE = args.profile
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    contexts = args.contexts or ([2048, 4096] if args.quick else [32768, 131072, 524288])
    batches = args.batches or ([1, 2] if args.quick else [1, 4, 16])
    steps = args.steps or (3 if args.quick else 20)
    rows: list[dict[str, object]] = []
    result = {
        "device": _device_name(device),
        "dtype": str(dtype),
        "steps": steps,
        "geometry": {"q_heads": Q_HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM},
        "config": "RetroInferConfig() defaults",
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(args.out) if args.out else RESULTS / f"attention_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for length in contexts:
        for batch in batches:
            rows.append(_bench_one(length, batch, steps, device, dtype))
            _print_row(rows[-1])
            out.write_text(json.dumps(result, indent=2))  # after every row
    _print_table(result)
    log.info("wrote %s", out)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small contexts, CPU friendly")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--contexts", type=int, nargs="*", default=None)
    p.add_argument("--batches", type=int, nargs="*", default=None)
    p.add_argument("--steps", type=int, default=None, help="timed decode steps per setting")
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--profile", action="store_true", help="print a kernel profile per setting")
    return p.parse_args()


def _bench_one(
    length: int, batch: int, steps: int, device: torch.device, dtype: torch.dtype
) -> dict[str, object]:
    row: dict[str, object] = {"context": length, "batch": batch}
    kv_bytes = 2 * batch * KV_HEADS * length * HEAD_DIM * torch.finfo(dtype).bits // 8
    free = _free_bytes(device)
    if kv_bytes * 1.2 > free:
        row["skipped"] = f"KV cache {kv_bytes / 2**30:.1f} GiB does not fit ({free / 2**30:.1f})"
        return row
    row["sdpa_ms"] = _time_sdpa(length, batch, steps, device, dtype)
    _release(device)
    if kv_bytes * RETRO_PEAK_FACTOR > _free_bytes(device):
        row["retro_skipped"] = (
            f"RetroInfer needs ~{RETRO_PEAK_FACTOR:.0f}x the KV size "
            f"({kv_bytes * RETRO_PEAK_FACTOR / 2**30:.0f} GiB): does not fit"
        )
        return row
    row.update(_time_retro(length, batch, steps, device, dtype))
    row["speedup"] = round(float(row["sdpa_ms"]) / float(row["retro_ms"]), 2)  # type: ignore[arg-type]
    _release(device)
    return row


def _time_sdpa(
    length: int, batch: int, steps: int, device: torch.device, dtype: torch.dtype
) -> float:
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn_like(k)
    qs = torch.randn(steps + 2, batch, Q_HEADS, 1, HEAD_DIM, device=device, dtype=dtype)

    def step(i: int) -> None:
        F.scaled_dot_product_attention(qs[i], k, v, enable_gqa=True)

    return _timed(step, steps, device)


def _time_retro(
    length: int, batch: int, steps: int, device: torch.device, dtype: torch.dtype
) -> dict[str, object]:
    cfg = RetroInferConfig()
    ids = [f"seq{b}" for b in range(batch)]
    source = InProcessClusterSource()
    layer = RetroInferLayer(
        cfg,
        0,
        Q_HEADS,
        KV_HEADS,
        HEAD_DIM,
        source,
        ids,
        dtype=dtype,
        device=device,
        on_segment=lambda s: source.put(ids, s),
    )
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn_like(k)
    _sync(device)
    t0 = time.perf_counter()
    layer.prefill(k, v)
    _sync(device)
    build_ms = (time.perf_counter() - t0) * 1e3
    del k, v
    qs = torch.randn(steps + 2, batch, Q_HEADS, HEAD_DIM, device=device, dtype=dtype)
    kvs = torch.randn(steps + 2, 2, batch, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    recorded: list[dict[str, torch.Tensor]] = []

    def step(i: int) -> None:
        recorded.append(layer.decode(qs[i], kvs[i, 0], kvs[i, 1])[1].counts)

    retro_ms = _timed(step, steps, device)
    totals = {key: sum(int(c[key]) for c in recorded[2:]) for key in recorded[-1]}
    graphed = layer._graph is not None
    layer.use_cuda_graph = False
    eager_ms = _timed(step, steps, device) if graphed else retro_ms
    if _PROFILE:
        _profile(step, device)
    torch_ms = None
    if layer.use_kernels and kernels_available(device):  # the pure-torch step, same layer
        layer.use_kernels, layer.use_cuda_graph, layer._graph = False, graphed, None
        layer._graph_warm = False
        torch_ms = _timed(step, steps, device)
    looked_up = totals.get("hits", 0) + totals.get("misses", 0)
    return {
        "retro_ms": retro_ms,
        "retro_eager_ms": eager_ms,
        "retro_torch_ms": torch_ms,
        "kernels": torch_ms is not None,
        "cuda_graph": graphed,
        "index_build_ms": round(build_ms, 2),
        "clusters": layer.num_clusters,
        "hit_ratio": round(totals.get("hits", 0) / max(looked_up, 1), 3),
        "overflow_clusters": totals.get("overflow_clusters", 0),
    }


def _timed(step: Callable[[int], None], steps: int, device: torch.device) -> float:
    """Mean ms per call over `steps` calls after 2 warm-up calls."""
    for i in range(2):
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(2, steps + 2):
        step(i)
    _sync(device)
    return round((time.perf_counter() - t0) / steps * 1e3, 4)


def _profile(step: Callable[[int], None], device: torch.device) -> None:
    """Print the top kernels of one decode step (--profile)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        step(0)
        _sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return 64 * 2**30


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _print_row(row: dict[str, object]) -> None:
    log.info("done: %s", row)


def _print_table(result: dict[str, object]) -> None:
    print(
        f"\nPer-layer decode attention, device: {result['device']}, dtype {result['dtype']}, "
        f"{Q_HEADS}q/{KV_HEADS}kv heads, D={HEAD_DIM}; retro ms = CUDA graph replay when "
        f"available (eager ms = same layer without graph; torch ms = the pure-torch step, "
        f"graph); random queries (worst-case hits)"
    )
    print(
        f"{'context':>8} {'batch':>5} {'sdpa ms':>9} {'retro ms':>9} {'speedup':>8} "
        f"{'eager ms':>9} {'torch ms':>9} {'build ms':>9} {'hit':>6}  note"
    )
    for row in result["rows"]:  # type: ignore[attr-defined]
        note = row.get("skipped") or row.get("retro_skipped") or ""
        print(
            f"{row['context']:>8} {row['batch']:>5} {_f(row, 'sdpa_ms'):>9} "
            f"{_f(row, 'retro_ms'):>9} {_f(row, 'speedup'):>8} {_f(row, 'retro_eager_ms'):>9} "
            f"{_f(row, 'retro_torch_ms'):>9} "
            f"{_f(row, 'index_build_ms'):>9} "
            f"{_f(row, 'hit_ratio'):>6}  {note}"
        )


def _f(row: dict[str, object], key: str) -> str:
    return "-" if key not in row else f"{row[key]}"


if __name__ == "__main__":
    main()
