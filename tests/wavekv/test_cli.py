"""The `wavekv` command: version, lazy imports, usage errors of every subcommand, benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WAVEKV = str(Path(sys.executable).parent / "wavekv")


def wavekv(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WAVEKV_", "RAY_"))}
    return subprocess.run([WAVEKV, *args], capture_output=True, text=True, timeout=120,
                          env=clean | (env or {}), cwd=cwd)  # fmt: skip


def test_version() -> None:
    done = wavekv("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"wavekv {metadata.version('wavekv')}"
    module = subprocess.run([sys.executable, "-m", "wavekv", "--version"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert module.stdout == done.stdout


def test_help_lists_every_subcommand() -> None:
    done = wavekv("--help")
    assert done.returncode == 0
    for name in ("store", "serve", "job", "cluster", "eval", "bench"):
        assert f"  {name} " in done.stdout


def test_store_loads_neither_torch_nor_ray() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from wavekv.cli import cli\n"
        "result = CliRunner().invoke(cli, ['store', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert '--capacity-bytes' in result.output\n"
        "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["cluster", "status", "--num-cpus", "x"], {}, "wavekv cluster: error: --num-cpus='x'"),
        (["cluster", "status"], {"WAVEKV_CLUSTER_NUM_CPUS": "1.5"},
         "wavekv cluster: error: WAVEKV_CLUSTER_NUM_CPUS='1.5'"),
        (["cluster", "launch"], {}, "wavekv cluster: error: argument command: invalid choice"),
        (["job", "run", "--workers", "-1", "--input", "i", "--output", "o"], {},
         "wavekv job run: error: --workers='-1': Input should be greater than or equal to 1"),
        (["serve", "--port", "99999"], {}, "wavekv serve: error: --port='99999'"),
        (["serve"], {"WAVEKV_SERVE_REPLICAS": "0"},
         "wavekv serve: error: WAVEKV_SERVE_REPLICAS='0'"),
        (["serve", "--attention", "dense"], {}, "wavekv serve: error: --attention='dense'"),
        (["job", "submit", "--state-dir", "/nonexistent", "--", "--input", "i", "--output", "o"],
         {}, "wavekv job submit: error: no --address, no $RAY_ADDRESS and no local cluster"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_usage_errors(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = wavekv(*args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert "Traceback" not in done.stderr


def test_bench_lists_and_refuses(tmp_path: Path) -> None:
    listed = wavekv("bench", "--help")
    assert listed.returncode == 0 and "store" in listed.stdout and "attention" in listed.stdout
    unknown = wavekv("bench", "nope")
    assert unknown.returncode == 2 and "unknown benchmark 'nope'" in unknown.stderr
    elsewhere = wavekv("bench", "store", cwd=tmp_path)
    assert elsewhere.returncode == 2 and "run `wavekv bench` from its root" in elsewhere.stderr
