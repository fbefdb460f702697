"""torch.profiler view of same-host miss calls (used by `miss_path --profile PATH`).

Profiles a few whole miss calls (an SDK call sequence, benchmarks/miss_sdk.py; CPU + CUDA
activities) and writes to PATH:
the operator table sorted by CPU time and by device time, then a timeline of the last call
(every CPU op and device kernel, start offset and duration in microseconds from the call's
start), so the time around the gather kernel can be attributed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

log = logging.getLogger("benchmarks.miss_profile")
CALLS = 5


def profile_calls(
    fetch: Callable[[torch.Tensor], object],
    pick: Callable[[], torch.Tensor],
    device: torch.device,
    path: Path,
) -> None:
    """Profile CALLS fetches of fresh ids and write the tables to `path` (never raises)."""
    try:
        picks = [pick() for _ in range(CALLS)]
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        wall = []
        with profile(activities=activities, record_shapes=False) as prof:
            for i, cluster_ids in enumerate(picks):
                _sync(device)
                t0 = time.perf_counter()
                with record_function(f"miss_call_{i}"):
                    fetch(cluster_ids)
                    _sync(device)
                wall.append((time.perf_counter() - t0) * 1e3)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_report(prof, wall, f"miss_call_{CALLS - 1}"))
    except Exception:  # a profiling failure must not cost the benchmark's numbers
        log.exception("profiling the miss path failed")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _report(prof, wall: list[float], last: str) -> str:  # type: ignore[no-untyped-def]
    avg = prof.key_averages()
    device_key = "self_device_time_total"
    lines = [
        f"wall ms per profiled call (profiler on): {', '.join(f'{w:.3f}' for w in wall)}",
        "",
        "== by CPU time total",
        avg.table(sort_by="cpu_time_total", row_limit=40),
        "== by device time",
        _table(avg, device_key),
        "== timeline of the last call (us from its start; cpu = host op, dev = kernel/copy)",
    ]
    return "\n".join(lines + _timeline(prof.events(), last)) + "\n"


def _table(avg, key: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(avg.table(sort_by=key, row_limit=40))
    except Exception:  # older torch: the CUDA name
        return str(avg.table(sort_by="self_cuda_time_total", row_limit=40))


def _timeline(events, last: str) -> list[str]:  # type: ignore[no-untyped-def]
    mark = [e for e in events if e.name == last]
    if not mark:
        return ["(call marker not found)"]
    t0, t1 = mark[0].time_range.start, mark[0].time_range.end
    inside = [e for e in events if t0 <= e.time_range.start <= t1 + 5000 and e.name != last]
    out = []
    for e in sorted(inside, key=lambda e: e.time_range.start):
        kind = "cpu" if str(e.device_type).endswith("CPU") else "dev"
        start, dur = e.time_range.start - t0, e.time_range.end - e.time_range.start
        out.append(f"{kind} {start:9.1f} {dur:9.1f}  {e.name[:90]}")
    return out
