"""The job CLI's failure modes that need no model: clear errors and non-zero exits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inference_worker.engine import GenerationRequest
from inference_worker.job import JobError, read_records


def _job(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "inference_worker.job", *args]
    full_env = {k: v for k, v in os.environ.items() if k != "WAVEKV_STORE_ADDRESS"} | (env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full_env)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_store_exits_nonzero_with_a_clear_error(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "hello"}) + "\n")
    done = _job(
        "--store",
        f"127.0.0.1:{_closed_port()}",
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--store-timeout-s",
        "2",
    )
    assert done.returncode == 2
    assert "unreachable" in done.stderr and "127.0.0.1" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_store_address_from_the_environment(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "hello"}) + "\n")
    address = f"127.0.0.1:{_closed_port()}"
    done = _job(
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "o"),
        "--store-timeout-s",
        "2",
        env={"WAVEKV_STORE_ADDRESS": address},
    )
    assert done.returncode == 2 and "unreachable" in done.stderr and address in done.stderr


def test_retroinfer_requires_a_store(tmp_path: Path) -> None:
    done = _job("--input", str(tmp_path / "x"), "--output", str(tmp_path / "y"))
    assert done.returncode == 2 and "--store" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "abc"], {}, "--workers='abc': Input should be a valid integer"),
        (["--workers", "0"], {}, "--workers='0': Input should be greater than or equal to 1"),
        ([], {"WAVEKV_JOB_WORKERS": "many"}, "WAVEKV_JOB_WORKERS='many'"),
        (["--attention", "sparse"], {}, "--attention='sparse': Input should be 'retroinfer'"),
        ([], {"WAVEKV_MAX_NEW_TOKENS": "-1"}, "WAVEKV_MAX_NEW_TOKENS='-1'"),
        (["--colour", "red"], {}, "unrecognized arguments: --colour red"),
    ],
)
def test_bad_flags_and_variables_are_one_line_usage_errors(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    base = ["--store", "127.0.0.1:1", "--input", "i", "--output", "o"]
    done = _job(*base, *args, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert lines[0].startswith("python -m inference_worker.job: error:")


def test_missing_relative_input_names_the_absolute_path(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "inference_worker.job", "--attention", "full"]
    done = subprocess.run(
        [*argv, "--input", "in.jsonl", "--output", "out.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert f"looked for {tmp_path / 'in.jsonl'}" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "in.jsonl:2: bad input record"),
        (json.dumps({"prompt": "x"}), "lacks field 'id'"),
        (json.dumps({"id": "b", "prompt": "x", "max_new_tokens": 0}), "max_new_tokens"),
        (json.dumps({"id": "b", "prompt": "x", "colour": 1}), "unknown fields ['colour']"),
        (json.dumps({"id": "a", "prompt": "again"}), "repeats ids"),
    ],
)
def test_bad_input_records_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "ok"}) + "\n" + line + "\n")
    with pytest.raises(JobError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_records(inp)


def test_records_become_requests_with_defaults() -> None:
    req = GenerationRequest.from_dict({"id": 7, "prompt": [1, 2, 3]}, default_max_new_tokens=5)
    assert req.id == "7" and req.prompt == [1, 2, 3] and req.max_new_tokens == 5


def test_retroinfer_settings_reach_the_run_config() -> None:
    from inference_worker.job import parse_args, run_config

    flags = ["--retrieval-budget", "0.05", "--min-retrieval-clusters", "0"]
    settings = parse_args(["--store", "127.0.0.1:1", "--input", "i", "--output", "o", *flags])
    retro = run_config(settings)["retro"]
    assert retro == {"retrieval_budget": 0.05, "min_retrieval_clusters": 0}


def test_bad_retroinfer_settings_exit_before_any_work(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "hello"}) + "\n")
    done = _job(
        "--store", f"127.0.0.1:{_closed_port()}", "--input", str(inp),
        "--output", str(tmp_path / "o"), "--min-retrieval-clusters", "-3",
    )  # fmt: skip
    assert done.returncode == 2
    assert "min_retrieval_clusters" in done.stderr and "-3" in done.stderr
    assert "unreachable" not in done.stderr  # settings are checked before the store
