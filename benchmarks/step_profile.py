"""Where the time of one RetroInfer decode step goes.

    python -m benchmarks.step_profile [--context 131072] [--batch 16] [--trace DIR]

One layer at the Llama-3.1-8B attention geometry (bf16, the step replayed from a CUDA graph as
the engine runs it), torch SDPA timed in the same run. For each query stream and each place of
the clusters (pinned host memory as the store keeps them; GPU memory, the upper bound): the step
time, its GPU-busy µs (the union of its kernels' intervals in a short profiler trace: the GPU
cost where a slow host bounds the wall-clock time), host µs per step, the GPU kernels of a step
by name, and (with --trace) the timeline of one step per stream and a Chrome trace.
Writes JSON (default benchmarks/results/step_profile_<device>.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from inference_worker.retroinfer import LayerGraph, RetroInferConfig
from inference_worker.retroinfer.config import CENTROID_FORMATS

from .attention import (
    HEAD_DIM,
    KV_HEADS,
    Q_HEADS,
    RESULTS,
    _device_name,
    _layer,
    _release,
    _sync,
    _time_sdpa,
    _timed,
)
from .query_stream import STREAMS, QueryStream

log = logging.getLogger(__name__)
PLACES = ("host", "device")  # where the clusters lie (see attention._layer)


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result: dict[str, object] = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "centroid_format": args.centroids,
        "context": args.context,
        "batch": args.batch,
        "steps": args.steps,
        "sdpa_ms": _time_sdpa(args.context, args.batch, args.steps, device, dtype),
        "streams": {},
    }
    _release(device)
    out = Path(args.out) if args.out else RESULTS / f"step_profile_{device.type}.json"
    for kind in args.streams:
        rho = args.rho if kind == "correlated" else 0.0
        stream = QueryStream(kind, (args.batch, Q_HEADS, HEAD_DIM), device, dtype, rho)
        result["streams"][kind] = {  # type: ignore[index]
            where: _profile(args, stream, dtype, where) for where in args.places
        }
        out.write_text(json.dumps(result, indent=2))
        _release(device)
    _print(result)
    log.info("wrote %s", out)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--context", type=int, default=131072)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed decode steps")
    p.add_argument("--streams", nargs="*", choices=STREAMS, default=list(STREAMS))
    p.add_argument("--places", nargs="*", choices=PLACES, default=list(PLACES))
    p.add_argument(
        "--rho", type=float, default=0.944, help="correlated stream (0.944: hit ~0.79 at 128K x 16)"
    )
    p.add_argument(
        "--centroids", choices=sorted(CENTROID_FORMATS),
        default=RetroInferConfig().centroid_format,
        help="RetroInferConfig.centroid_format (default: the config's)",
    )  # fmt: skip
    p.add_argument("--out", default=None)
    p.add_argument("--trace", default=None, help="folder for a Chrome trace per stream and place")
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this program only")
    return p.parse_args()


class _Runner:
    """A prefilled layer fed by a query stream (random new K/V every step). The stream runs on
    across phases: every step takes the stream's next query, whatever its caller's index."""

    def __init__(
        self, length: int, batch: int, stream: QueryStream, dtype: torch.dtype,
        centroids: str | None = None, where: str = "host",
    ) -> None:  # fmt: skip
        dev = stream.device
        cfg = RetroInferConfig(centroid_format=centroids or RetroInferConfig().centroid_format)
        k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device=dev, dtype=dtype)
        place = where if dev.type == "cuda" else "device"
        self.layer, _ = _layer(cfg, batch, dev, dtype, place, k, torch.randn_like(k))
        del k
        capturable = self.layer.capturable()
        self.decode = LayerGraph(self.layer).decode if capturable else self.layer.decode
        self.stream = stream
        self.kv = torch.randn(8, 2, batch, KV_HEADS, HEAD_DIM, device=dev, dtype=dtype)
        self.queries = stream.take(64)
        self.counts: list[dict[str, torch.Tensor]] = []
        self.taken = 0  # steps run so far (the stream's position)

    def step(self, _: int = 0) -> None:
        """One decode step on the stream's next query (a fresh block every 64 steps)."""
        t, n = self.taken, self.queries.shape[0]
        if t and t % n == 0:
            self.queries = self.stream.take(n)
        self.taken += 1
        new = self.kv[t % self.kv.shape[0]]
        self.counts.append(self.decode(self.queries[t % n], new[0], new[1])[1].counts)

    def timed(self, steps: int) -> dict[str, float]:
        """ms per decode call and the hit ratio of those steps (after 2 warm-up steps)."""
        first = len(self.counts) + 2
        ms = _timed(self.step, steps, self.stream.device)
        hits = sum(int(c["hits"]) for c in self.counts[first:])
        misses = sum(int(c["misses"]) for c in self.counts[first:])
        return {"ms": ms, "hit_ratio": round(hits / max(hits + misses, 1), 3)}

    def host_us(self, steps: int) -> float:
        """Host µs per decode call alone: the calls are issued while the GPU spins on a long
        sleep kernel, so they never wait for it (the graphed step has no host sync)."""
        dev = self.stream.device
        if dev.type != "cuda":
            return 0.0
        self.step()
        _sync(dev)
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        host = time.perf_counter() - t0
        _sync(dev)
        return round(host / steps * 1e6, 1)

    def kernels(self, steps: int = 5, trace: Path | None = None) -> dict[str, float]:
        """GPU µs per step by kernel name (graph replays included), largest first. trace: also
        write the profiler's Chrome trace there (each kernel's stream, start and duration)."""
        for i in range(3):
            self.step(i)
        _sync(self.stream.device)
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.stream.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            for i in range(steps):
                self.step(i)
            _sync(self.stream.device)
        if trace is not None:
            prof.export_chrome_trace(str(trace))
        per: dict[str, float] = {}
        for ev in prof.key_averages():
            dev_us = getattr(ev, "self_device_time_total", 0.0)
            if dev_us > 0 and ev.device_type == torch.autograd.DeviceType.CUDA:
                per[ev.key[:60]] = per.get(ev.key[:60], 0.0) + dev_us / steps
        ordered = dict(sorted(per.items(), key=lambda kv: -kv[1]))
        return {k: round(v, 1) for k, v in ordered.items()}


def gpu_busy_us(trace: Path, steps: int) -> float:
    """GPU-busy µs per step in a Chrome trace of `steps` steps: the union of every kernel's and
    copy's interval (overlapping streams count once), host gaps excluded. A step's GPU cost
    where the host, not the GPU, bounds the wall-clock time."""
    events = json.loads(trace.read_text())["traceEvents"]
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return round(busy / steps, 1)


def _with_busy(run: _Runner, timed: dict[str, float], steps: int = 6) -> dict[str, float]:
    """`timed` plus the GPU-busy µs per step of `steps` more steps (CUDA only)."""
    if run.stream.device.type != "cuda":
        return timed
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        run.kernels(steps, trace=trace)
        return timed | {"gpu_busy_us": gpu_busy_us(trace, steps)}


def step_timeline(trace: Path, first: str = "logits_kernel") -> list[list[object]]:
    """The GPU work of the last complete step in a Chrome trace: [stream, start µs (from the
    step's first `first` kernel), duration µs, name] per kernel or copy, in start order, and
    last the next step's start ("next step", duration 0)."""
    events = json.loads(trace.read_text())["traceEvents"]
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    gpu.sort(key=lambda e: e["ts"])
    starts = [i for i, e in enumerate(gpu) if e["name"] == first]
    if len(starts) < 2:
        return []
    step = gpu[starts[-2] : starts[-1]]
    t0 = step[0]["ts"]
    rows = [
        [e.get("args", {}).get("stream"), round(e["ts"] - t0, 1), round(e["dur"], 1),
         e["name"][:60]]
        for e in step
    ]  # fmt: skip
    nxt = gpu[starts[-1]]  # the next step's first kernel: the gap before it is launch latency
    return [*rows, [nxt.get("args", {}).get("stream"), round(nxt["ts"] - t0, 1), 0.0, "next step"]]


def _profile(
    args: argparse.Namespace, stream: QueryStream, dtype: torch.dtype, where: str
) -> dict[str, object]:
    run = _Runner(args.context, args.batch, stream, dtype, args.centroids, where)
    run.timed(args.steps)  # warm-up: capture, the cache settles
    timed = _with_busy(run, run.timed(args.steps))
    trace = Path(args.trace) / f"trace_{stream.kind}_{where}.json" if args.trace else None
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
    host = run.host_us(args.steps)
    kernels = run.kernels(trace=trace)
    log.info("%s, clusters in %s memory: %s, host µs %s", stream.kind, where, timed, host)
    return {
        **timed,
        "rho": stream.rho,
        "clusters": run.layer.num_clusters,
        "cuda_graph": run.layer.capturable(),
        "host_us_per_step": host,
        "kernels_us_per_step": kernels,
        "kernel_total_us": round(sum(kernels.values()), 1),
        "timeline_us": step_timeline(trace) if trace is not None else [],
    }


def _print(result: dict[str, object]) -> None:
    sdpa = float(result["sdpa_ms"])  # type: ignore[arg-type]
    print(
        f"\nRetroInfer decode step, {result['device']}, context {result['context']} x batch "
        f"{result['batch']}; SDPA {sdpa} ms (same run)"
    )
    print(f"{'stream':>10} {'clusters in':>11} {'ms':>8} {'x SDPA':>7} {'hit':>6} "
          f"{'GPU-busy us':>11} {'host us':>8}")  # fmt: skip
    for kind, places in result["streams"].items():  # type: ignore[attr-defined]
        for where, data in places.items():
            busy = data.get("gpu_busy_us", "-")
            print(f"{kind:>10} {where:>11} {data['ms']:>8.4f} {sdpa / data['ms']:>7.2f} "
                  f"{data['hit_ratio']:>6} {busy:>11} {data['host_us_per_step']:>8}")  # fmt: skip
    for kind, places in result["streams"].items():  # type: ignore[attr-defined]
        for where, data in places.items():
            print(f"\n[{kind}, {where}] kernel µs per step (total {data['kernel_total_us']}):")
            for name, us in list(data["kernels_us_per_step"].items())[:14]:
                print(f"  {us:>8.1f}  {name}")


if __name__ == "__main__":
    main()
