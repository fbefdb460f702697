"""Wave-index build time per layer: the Triton k-means path vs the torch path, same run.

    python -m benchmarks.index_build [--out PATH] [--sweep] [--profile]

Llama-3.1-8B geometry (8 KV heads, head_dim 128, bf16), random keys/values, the prefill's
segment and cluster counts (RetroInferConfig defaults). Each path runs once to warm up (Triton
compiles there), then `--reps` timed builds (CUDA-synchronised); the table gives the median.
Both paths' clustering quality is reported as the mean squared distance of a key to its
centroid. `--sweep` also times tile settings of the assignment kernel; `--profile` prints the
kernel profile of one Triton build. Writes JSON (default results/index_build_cuda.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from inference_worker.retroinfer import IndexSegment, RetroInferConfig, build_segment
from inference_worker.retroinfer.kernels.assign import AssignTiles, assign_labels, sort_clusters
from inference_worker.retroinfer.kernels.cluster_sums import cluster_sums

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
KV_HEADS, HEAD_DIM = 8, 128
SWEEP = (
    (128, 64, 4, 3),
    (128, 64, 4, 4),
    (128, 64, 4, 2),
    (128, 32, 4, 3),
    (64, 64, 4, 3),
    (128, 64, 8, 3),
    (256, 64, 4, 3),
    (64, 32, 4, 3),
    (128, 128, 8, 3),
)  # fmt: skip  (block_n, block_c, num_warps, num_stages) of the assignment kernel
SUM_SWEEP = ((16, 1), (16, 2), (16, 4), (32, 2), (32, 4), (8, 1), (8, 2))  # (block, warps)


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("index_build needs CUDA (the torch path alone is timed by attention.py)")
    dev = torch.device("cuda")
    cases = [(c, b) for c in args.contexts for b in args.batches if c * b <= args.max_tokens]
    rows = []
    for context, batch in cases:
        rows.append(_bench_case(context, batch, args.reps, args.torch_reps, dev))
        _print_row(rows[-1])
        torch.cuda.empty_cache()
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "geometry": {"kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16"},
        "config": "RetroInferConfig() defaults (9 in-segment iterations + final global pass)",
        "timing": f"median of {args.reps} (triton) / {args.torch_reps} (torch) after 1 warm-up",
        "rows": rows,
    }
    if args.sweep:
        result["sweep_ms"] = _sweep(dev)
    if args.profile:
        _profile(dev)
    _print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="*", default=[32768, 131072, 524288])
    p.add_argument("--batches", type=int, nargs="*", default=[1, 4])
    p.add_argument("--max-tokens", type=int, default=524288, help="skip context x batch above")
    p.add_argument("--reps", type=int, default=10, help="timed Triton builds per case")
    p.add_argument("--torch-reps", type=int, default=3, help="timed torch builds per case")
    p.add_argument("--sweep", action="store_true", help="time assignment-kernel tile settings")
    p.add_argument("--profile", action="store_true", help="kernel profile of a 128K x 1 build")
    p.add_argument("--out", default=str(RESULTS / "index_build_cuda.json"))
    return p.parse_args()


def _layout(context: int) -> tuple[int, int, int, int]:
    """(first, end, n_seg, per_seg) of the prefill's clustered span, as RetroInferLayer does."""
    cfg = RetroInferConfig()
    sink, end = cfg.sink_tokens, context - cfg.window_tokens
    n_seg = cfg.num_segments(context)
    return sink, end, n_seg, cfg.num_clusters(end - sink, n_seg) // n_seg


def _bench_case(context: int, batch: int, reps: int, torch_reps: int, dev: torch.device) -> dict:
    sink, end, n_seg, per_seg = _layout(context)
    k = torch.randn(batch, KV_HEADS, context, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    iters = RetroInferConfig().kmeans_iterations
    chunk = RetroInferConfig().final_assign_chunk

    def build(use_triton: bool | None) -> IndexSegment:
        return build_segment(
            k[:, :, sink:end], v[:, :, sink:end], sink, 0, 0, n_seg, per_seg, iters, chunk,
            use_triton=use_triton,
        )  # fmt: skip

    fast_ms, fast_seg = _timed(lambda: build(None), reps)
    sse_fast = _sse(fast_seg, k[:, :, sink:end])
    del fast_seg
    torch_ms, torch_seg = _timed(lambda: build(False), torch_reps)
    sse_torch = _sse(torch_seg, k[:, :, sink:end])
    return {
        "context": context,
        "batch": batch,
        "segments": n_seg,
        "clusters": n_seg * per_seg,
        "triton_ms": round(statistics.median(fast_ms), 2),
        "triton_min_ms": round(min(fast_ms), 2),
        "torch_ms": round(statistics.median(torch_ms), 2),
        "speedup": round(statistics.median(torch_ms) / statistics.median(fast_ms), 1),
        "sse_triton": round(sse_fast, 4),
        "sse_torch": round(sse_torch, 4),
    }


def _timed(fn: Callable[[], IndexSegment], reps: int) -> tuple[list[float], IndexSegment]:
    """One warm-up call, then `reps` synchronised timings (ms); returns the last result."""
    seg = fn()
    times = []
    for _ in range(reps):
        del seg
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        seg = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, seg


def _sse(seg: IndexSegment, keys: torch.Tensor) -> float:
    """Mean squared distance of a key (fp32) to its cluster's centroid."""
    b, h, n, d = seg.keys.shape
    pos = torch.arange(n, device=keys.device).expand(b * h, n).contiguous()
    run = torch.searchsorted(seg.offsets.reshape(b * h, -1)[:, 1:].contiguous(), pos, right=True)
    cent = seg.centroids.reshape(b * h, -1, d).gather(1, run.unsqueeze(-1).expand(-1, -1, d))
    return float(((seg.keys.reshape(b * h, n, d).float() - cent) ** 2).sum(-1).mean())


def _sweep(dev: torch.device) -> list[dict[str, object]]:
    """Kernels alone at the 128K x 1 shapes: the final pass (8 rows x 131004 tokens x 8192
    clusters) and one in-segment iteration (16 segments of 8188 tokens x 512 clusters per row)."""
    k = torch.randn(8, 131004, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    shift = torch.zeros(8, HEAD_DIM, device=dev)
    out: list[dict[str, object]] = []
    for name, segs, c in (("final", 1, 8192), ("in_segment", 16, 512)):
        cent = torch.randn(8 * segs, c, HEAD_DIM, device=dev, dtype=torch.bfloat16)
        for bn, bc, warps, stages in SWEEP:
            tiles = AssignTiles(bn, bc, warps, stages)
            call = partial(assign_labels, k, cent, None, shift, True, tiles, num_segments=segs)
            ms = _median_ms(call, 10)
            tflops = 2 * 8 * 131004 * c * HEAD_DIM / ms / 1e9
            out.append({"kernel": "assign", "shape": name, "tiles": [bn, bc, warps, stages],
                        "ms": round(ms, 3), "tflops": round(tflops, 1)})  # fmt: skip
            log.info("assign %-10s %-18s %8.3f ms %6.1f TFLOP/s", name, (bn, bc, warps, stages),
                     ms, tflops)  # fmt: skip
        labels = assign_labels(k, cent, None, shift, True, num_segments=segs)
        order, offsets = sort_clusters(labels, c)
        prev = torch.randn(8 * segs, c, HEAD_DIM, device=dev) if segs > 1 else None
        for block, warps in SUM_SWEEP:
            sums = partial(cluster_sums, k, order, offsets, shift, prev, segs == 1, True, segs,
                           block, warps)  # fmt: skip
            ms = _median_ms(sums, 10)
            out.append({"kernel": "cluster_sums", "shape": name, "tiles": [block, warps],
                        "ms": round(ms, 3)})  # fmt: skip
            log.info("sums   %-10s %-18s %8.3f ms", name, (block, warps), ms)
    return out


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _profile(dev: torch.device) -> None:
    sink, end, n_seg, per_seg = _layout(131072)
    k = torch.randn(1, KV_HEADS, 131072, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    args = (k[:, :, sink:end], k[:, :, sink:end], sink, 0, 0, n_seg, per_seg, 10, 16384)
    build_segment(*args)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        build_segment(*args)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return str(triton.__version__)


def _print_row(row: dict[str, object]) -> None:
    log.info("%s", row)


def _print_table(result: dict[str, object]) -> None:
    print(f"\nWave-index build per layer on {result['device']} ({result['timing']})")
    print(f"{'context':>8} {'batch':>5} {'clusters':>8} {'triton ms':>10} {'torch ms':>9} "
          f"{'speedup':>7} {'sse triton':>10} {'sse torch':>9}")  # fmt: skip
    for row in result["rows"]:  # type: ignore[attr-defined]
        print(
            f"{row['context']:>8} {row['batch']:>5} {row['clusters']:>8} {row['triton_ms']:>10} "
            f"{row['torch_ms']:>9} {row['speedup']:>7} {row['sse_triton']:>10} "
            f"{row['sse_torch']:>9}"
        )


if __name__ == "__main__":
    main()
