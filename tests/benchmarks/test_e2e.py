"""A CPU smoke run of the product benchmark: a real store process, the shared-memory link and
the in-process reference link through GenerationEngine.generate (the GPU numbers come from the
device runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    cmd = [
        sys.executable, "-m", "benchmarks.e2e", "--device", "cpu", "--model", "random-tiny",
        "--contexts", "1600", "--batches", "2", "--steps", "4", "--capacity", "1GiB",
        "--host-gib", "1", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    full, *retro = rows
    assert full["attention"] == "full" and full["batch"] == 2 and "hit_ratio" not in full
    assert [(r["queries"], r["path"]) for r in retro] == [
        ("correlated", "store process, shm"), ("correlated", "in-process link, pinned host"),
        ("model", "store process, shm"), ("model", "in-process link, pinned host"),
    ]  # fmt: skip
    assert all(r["tokens_per_s"] > 0 and 0 < r["hit_ratio"] < 1 for r in retro)
    # the model's own queries are deterministic: the store process and the in-process source
    # retrieve the same clusters
    store, in_process = retro[2], retro[3]
    assert store["misses_per_step"] == in_process["misses_per_step"]
    assert store["hit_ratio"] == in_process["hit_ratio"]
