"""`wavekv job submit` without a cluster: paths made absolute on the submitting side, and the
job's own checks before anything is submitted (the cluster runs are in test_cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_worker.job_submit import absolute_paths, main


def test_relative_paths_become_absolute_here(tmp_path: Path) -> None:
    argv = ["--input", "in.jsonl", "--output=out/o.jsonl", "--token-file", "/abs/t", "--workers",
            "2", "--model", "rel.gguf"]  # fmt: skip
    assert absolute_paths(argv, tmp_path) == [
        "--input", str(tmp_path / "in.jsonl"), f"--output={tmp_path / 'out/o.jsonl'}",
        "--token-file", "/abs/t", "--workers", "2", "--model", "rel.gguf",
    ]  # fmt: skip


def test_the_jobs_flags_are_checked_before_submitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")  # nothing listens: never reached
    argv = ["--", "--input", "i", "--output", "o", "--store", "h:1", "--workers", "zero"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "wavekv job submit: error: --workers='zero': Input should be a valid integer, " \
        "unable to parse string as an integer"  # fmt: skip
