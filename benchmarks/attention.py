"""Per-layer decode attention: RetroInfer vs torch SDPA (same run), plus index build time.

    python -m benchmarks.attention            # Llama-3.1-8B geometry, GPU sizes
    python -m benchmarks.attention --quick    # small CPU-friendly setting
    ... --streams random correlated --target-hit 0.78          # query streams (default: both)

The headline (`retro_ms`) keeps the clusters where the store keeps them: in pinned host memory,
every miss read over PCIe by the decode kernel. `retro_device_ms` keeps them in GPU memory (an
upper bound: misses never cross PCIe). Both replay the layer step from a CUDA graph (as the
engine does); `retro_eager_ms` is the host-memory step without the graph. Writes JSON to
benchmarks/results/ (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import torch
import torch.nn.functional as F

from inference_worker.retroinfer import (
    IndexSegment,
    InProcessClusterSource,
    LayerGraph,
    RetroInferConfig,
    RetroInferLayer,
)
from inference_worker.retroinfer.config import CENTROID_FORMATS

from .query_stream import STREAMS, QueryStream, calibrate_rho

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
        "config": f"RetroInferConfig() defaults, centroid_format={args.centroids!r}",
        "query_streams": {
            "random": "fresh N(0,1) queries every step: the worst case for the cache",
            "correlated": "q_t = rho*q_(t-1) + sqrt(1-rho^2)*noise, rho calibrated so the hit "
            f"ratio is close to {args.target_hit} (the real SmolLM2 model measured 0.78)",
        },
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(args.out) if args.out else RESULTS / f"attention_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for length in contexts:
        for batch in batches:
            sdpa: dict[str, object] = {}
            for stream in args.streams:
                rows.append(_bench_one(length, batch, steps, device, dtype, stream, args, sdpa))
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
    p.add_argument(
        "--centroids", choices=sorted(CENTROID_FORMATS),
        default=RetroInferConfig().centroid_format,
        help="RetroInferConfig.centroid_format (default: the config's; model: the model dtype)",
    )  # fmt: skip
    p.add_argument("--streams", nargs="*", choices=STREAMS, default=list(STREAMS))
    p.add_argument("--target-hit", type=float, default=0.78, help="correlated: hit ratio goal")
    p.add_argument("--rho", type=float, default=None, help="correlated: fixed rho (no search)")
    return p.parse_args()


def _bench_one(
    length: int,
    batch: int,
    steps: int,
    device: torch.device,
    dtype: torch.dtype,
    stream: str,
    args: argparse.Namespace,
    sdpa: dict[str, object],  # SDPA's time of this (context, batch), shared by the streams
) -> dict[str, object]:
    row: dict[str, object] = {"context": length, "batch": batch, "query_stream": stream}
    kv_bytes = 2 * batch * KV_HEADS * length * HEAD_DIM * torch.finfo(dtype).bits // 8
    free = _free_bytes(device)
    if kv_bytes * 1.2 > free:
        row["skipped"] = f"KV cache {kv_bytes / 2**30:.1f} GiB does not fit ({free / 2**30:.1f})"
        return row
    if "sdpa_ms" not in sdpa:
        sdpa["sdpa_ms"] = _time_sdpa(length, batch, steps, device, dtype)
        _release(device)
    row["sdpa_ms"] = sdpa["sdpa_ms"]
    if kv_bytes * RETRO_PEAK_FACTOR > _free_bytes(device):
        row["retro_skipped"] = (
            f"RetroInfer needs ~{RETRO_PEAK_FACTOR:.0f}x the KV size "
            f"({kv_bytes * RETRO_PEAK_FACTOR / 2**30:.0f} GiB): does not fit"
        )
        return row
    qs = QueryStream(stream, (batch, Q_HEADS, HEAD_DIM), device, dtype, args.rho or 0.0)
    row.update(_time_retro(length, batch, steps, device, dtype, qs, args))
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
    length: int,
    batch: int,
    steps: int,
    device: torch.device,
    dtype: torch.dtype,
    stream: QueryStream,
    args: argparse.Namespace,
) -> dict[str, object]:
    cfg = RetroInferConfig(centroid_format=args.centroids)
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn_like(k)
    layers, build_ms = {}, 0.0
    for where in ("host", "device") if device.type == "cuda" else ("device",):
        layers[where], ms = _layer(cfg, batch, device, dtype, where, k, v)
        build_ms = build_ms or ms
    del k, v
    kvs = torch.randn(steps + 2, 2, batch, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    recorded: list[dict[str, torch.Tensor]] = []
    qs = [stream.take(steps + 2)]  # the current block of queries
    run = [layers.get("host", layers["device"]).decode]

    def step(i: int) -> None:
        new = kvs[i % kvs.shape[0]]
        recorded.append(run[0](qs[0][i], new[0], new[1])[1].counts)

    def hit_ratio_of(block: torch.Tensor) -> float:
        """Runs a block of queries; hit ratio of its last two thirds (cache settled)."""
        qs[0], start = block, len(recorded)
        for i in range(block.shape[0]):
            step(i)
        tail = recorded[start + block.shape[0] // 3 :]
        hits = sum(int(c["hits"]) for c in tail)
        return hits / max(hits + sum(int(c["misses"]) for c in tail), 1)

    calibration = None
    if stream.kind == "correlated" and args.rho is None:
        calibration = calibrate_rho(stream, hit_ratio_of, args.target_hit)
    times: dict[str, float | None] = {"eager": None, "host": None, "device": None}
    for name in ("eager", *layers):  # eager: the host-memory layer without a graph
        layer = layers.get("host", layers["device"]) if name == "eager" else layers[name]
        graphed = name != "eager" and layer.capturable()
        run[0] = LayerGraph(layer).decode if graphed else layer.decode
        qs[0] = stream.take(steps + 2)  # fresh queries for every timed phase
        first = len(recorded) + 2
        times[name] = _timed(step, steps, device)
        if name == next(iter(layers)):
            totals = {key: sum(int(c[key]) for c in recorded[first:]) for key in recorded[-1]}
            if _PROFILE:
                _profile(step, device)
    looked_up = totals.get("hits", 0) + totals.get("misses", 0)
    headline = times["host"] if times["host"] is not None else times["device"]
    return {
        "rho": round(stream.rho, 4) if stream.kind == "correlated" else None,
        "rho_calibration_hit_ratio": None if calibration is None else round(calibration[1], 3),
        "retro_ms": headline,
        "retro_device_ms": times["device"],
        "retro_eager_ms": times["eager"],
        "clusters_in": "pinned host memory" if "host" in layers else "device memory",
        "kernels": layers["device"].kernels,
        "cuda_graph": layers["device"].capturable(),
        "index_build_ms": round(build_ms, 2),
        "clusters": layers["device"].num_clusters,
        "hit_ratio": round(totals.get("hits", 0) / max(looked_up, 1), 3),
        "overflow_clusters": totals.get("overflow_clusters", 0),
    }


def _layer(
    cfg: RetroInferConfig,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    where: str,  # "host": clusters in pinned host memory; "device": in GPU memory
    k: torch.Tensor,  # [B, Hkv, L, D]
    v: torch.Tensor,
) -> tuple[RetroInferLayer, float]:
    """A layer prefilled with k/v whose source keeps the clusters `where`; build ms."""
    ids = [f"seq{b}" for b in range(batch)]
    source = InProcessClusterSource()

    def keep(owners: list[Hashable], segment: IndexSegment) -> None:
        if where == "host":
            keys, values = segment.keys.cpu().pin_memory(), segment.values.cpu().pin_memory()
            segment = dataclasses.replace(segment, keys=keys, values=values)
        source.put(owners, segment)

    layer = RetroInferLayer(
        cfg, 0, Q_HEADS, KV_HEADS, HEAD_DIM, source, ids, dtype=dtype, device=device,
        on_segment=keep,
    )  # fmt: skip
    _sync(device)
    t0 = time.perf_counter()
    layer.prefill(k, v)
    _sync(device)
    return layer, (time.perf_counter() - t0) * 1e3


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
        f"{Q_HEADS}q/{KV_HEADS}kv heads, D={HEAD_DIM}; retro ms = clusters in pinned host "
        f"memory (misses over PCIe), CUDA graph; device ms = clusters in GPU memory (upper "
        f"bound), graph; eager ms = host memory without the graph; query stream random = "
        f"worst-case hits, correlated = rho-correlated queries"
    )
    print(
        f"{'context':>8} {'batch':>5} {'stream':>10} {'rho':>6} {'sdpa ms':>9} {'retro ms':>9} "
        f"{'speedup':>8} {'device ms':>9} {'eager ms':>9} {'build ms':>9} {'hit':>6}  note"
    )
    for row in result["rows"]:  # type: ignore[attr-defined]
        note = row.get("skipped") or row.get("retro_skipped") or ""
        print(
            f"{row['context']:>8} {row['batch']:>5} {_f(row, 'query_stream'):>10} "
            f"{_f(row, 'rho'):>6} {_f(row, 'sdpa_ms'):>9} "
            f"{_f(row, 'retro_ms'):>9} {_f(row, 'speedup'):>8} "
            f"{_f(row, 'retro_device_ms'):>9} {_f(row, 'retro_eager_ms'):>9} "
            f"{_f(row, 'index_build_ms'):>9} "
            f"{_f(row, 'hit_ratio'):>6}  {note}"
        )


def _f(row: dict[str, object], key: str) -> str:
    return "-" if key not in row else f"{row[key]}"


if __name__ == "__main__":
    main()
