"""The step profiler's timeline extraction (a Chrome trace -> one step's GPU work) and a CPU
smoke run of the program with a trace (the GPU numbers come from the device runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.step_profile import gpu_busy_us, step_timeline


def _event(name: str, ts: float, dur: float, stream: int, cat: str = "kernel") -> dict:
    return {"name": name, "ts": ts, "dur": dur, "cat": cat, "args": {"stream": stream}}


def test_timeline_is_the_last_complete_step(tmp_path: Path) -> None:
    events = [
        _event("logits_kernel", 100.0, 10.0, 7),
        _event("select_kernel", 111.0, 5.0, 7),
        _event("logits_kernel", 200.0, 10.0, 7),  # the last complete step starts here
        _event("estimate_kernel", 212.5, 4.0, 9),
        _event("Memcpy DtoD", 211.0, 1.0, 7, cat="gpu_memcpy"),
        {"name": "aten::copy_", "ts": 205.0, "dur": 3.0, "cat": "cpu_op"},  # not GPU work
        _event("logits_kernel", 300.0, 10.0, 7),  # the next (incomplete) step
        _event("select_kernel", 311.0, 5.0, 7),
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    assert step_timeline(trace) == [
        [7, 0.0, 10.0, "logits_kernel"],
        [7, 11.0, 1.0, "Memcpy DtoD"],
        [9, 12.5, 4.0, "estimate_kernel"],
        [7, 100.0, 0.0, "next step"],  # the next step's start
    ]
    trace.write_text(json.dumps({"traceEvents": events[:2]}))
    assert step_timeline(trace) == []  # no complete step


def test_gpu_busy_time_counts_overlapping_streams_once(tmp_path: Path) -> None:
    events = [
        _event("logits_kernel", 100.0, 10.0, 7),  # 100-110
        _event("estimate_kernel", 105.0, 10.0, 9),  # 105-115: 5 more
        _event("select_kernel", 107.0, 2.0, 7),  # inside: nothing more
        _event("Memcpy DtoD", 130.0, 4.0, 7, cat="gpu_memcpy"),  # after a host gap: 4
        {"name": "aten::copy_", "ts": 115.0, "dur": 15.0, "cat": "cpu_op"},  # not GPU work
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    assert gpu_busy_us(trace, 1) == 19.0
    assert gpu_busy_us(trace, 2) == 9.5


def test_cpu_smoke_run_writes_json_and_traces(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    cmd = [
        sys.executable, "-m", "benchmarks.step_profile", "--device", "cpu",
        "--context", "4096", "--batch", "1", "--steps", "2", "--places", "device",
        "--trace", str(tmp_path), "--out", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert set(result["streams"]) == {"random", "correlated"}
    for kind, places in result["streams"].items():
        assert set(places) == {"device"}
        assert (tmp_path / f"trace_{kind}_device.json").is_file()
        assert places["device"]["timeline_us"] == []  # CPU: no GPU kernels in the trace
        assert places["device"]["ms"] > 0 and 0 <= places["device"]["hit_ratio"] <= 1


def test_runner_takes_the_next_query_every_step_across_phases() -> None:
    """Timed phases and profiling passes restart their own step index at 0; the runner must still
    feed the stream's next query (a repeated query would inflate the hit ratio), and draw a
    fresh block of queries after 64 steps."""
    from benchmarks.query_stream import QueryStream
    from benchmarks.step_profile import HEAD_DIM, Q_HEADS, _Runner

    torch.manual_seed(0)
    stream = QueryStream(
        "correlated", (1, Q_HEADS, HEAD_DIM), torch.device("cpu"), torch.float32, 0.9
    )
    run = _Runner(4096, 1, stream, torch.float32)
    seen: list[torch.Tensor] = []
    decode = run.decode

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):  # type: ignore[no-untyped-def]
        seen.append(q.clone())
        return decode(q, k, v)

    run.decode = recording
    first = run.queries
    run.timed(2)  # 2 warm-up + 2 timed steps
    run.timed(2)
    for i in range(62):
        run.step(i % 3)
    assert len(seen) == 70
    assert all(torch.equal(seen[i], first[i]) for i in range(64))
    assert all(torch.equal(seen[64 + i], run.queries[i]) for i in range(6))
    assert not torch.equal(run.queries, first)
