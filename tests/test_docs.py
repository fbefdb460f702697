"""The shell and Python examples of README.md, docs/cluster.md and docs/serve.md, run as written.

Every ```bash / ```python block of those files is either run here or listed as skipped with the
reason (it needs Docker or a GPU, or runs forever in the foreground, or is what CI runs anyway).
Blocks run in scenarios: one bash session per scenario, in a fresh folder with a private cluster
state dir, the virtualenv first on PATH (as after `. .venv/bin/activate`); a Python block inside
a scenario runs as `python - <<EOF` so it sees the session's exported variables. A scenario that
starts a local cluster always ends with `wavekv cluster down`, even when a block fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/cluster.md", "docs/serve.md")
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCKER = (
    "needs a Docker engine and NVIDIA GPUs (compose); tests/test_compose.py validates the files"
)


@dataclass(frozen=True)
class Block:
    doc: str
    lang: str
    code: str

    @property
    def first(self) -> str:
        return self.code.splitlines()[0]


@dataclass(frozen=True)
class Rule:
    doc: str
    starts: str  # the block's first line starts with this
    scenario: str | None  # where it runs, or None: skipped
    reason: str = ""  # why it is skipped
    order: int = 0  # position inside the scenario


RULES = [
    Rule("README.md", "make demo", None, "`make test` is what CI runs (it runs this file); "
         "`make demo` takes ~10 minutes on 2 CPU cores, run it by hand"),
    Rule("README.md", "wavekv cluster up --serve", "local-cluster", order=0),
    Rule("README.md", "import os", "local-cluster", order=1),
    Rule("docs/serve.md", 'curl -s "$OPENAI_BASE_URL/models"', "local-cluster", order=2),
    Rule("docs/serve.md", 'curl -s "$OPENAI_BASE_URL/chat/completions"', "local-cluster", order=3),
    Rule("docs/serve.md", "import os", "local-cluster", order=4),
    Rule("docs/serve.md", 'curl -s "${OPENAI_BASE_URL%/v1}/metrics"', "local-cluster", order=5),
    Rule("README.md", "printf", "local-cluster", order=6),  # the job, then `cluster down`
    Rule("README.md", "import torch", "python-api", order=0),
    Rule("README.md", "from inference_worker.engine", "python-api", order=1),
    Rule("docs/cluster.md", "cp .env.example .env", None, DOCKER),
    Rule("docs/cluster.md", "COMPOSE_PROFILES=gpus-4", None, DOCKER),
    Rule("docs/cluster.md", "mkdir -p data", None, DOCKER),
    Rule("docs/cluster.md", "export RAY_ADDRESS=http://127.0.0.1:8265", None, DOCKER),
    Rule("docs/cluster.md", "COMPOSE_PROFILES=monitoring", None, DOCKER),
    Rule("docs/cluster.md", "docker compose down", None, DOCKER),
    Rule("docs/cluster.md", ".venv/bin/python -m pytest -q tests/test_compose.py\n", "repo", 0),
    Rule("docs/cluster.md", "wavekv cluster up [", None,
         "a synopsis with placeholders; the next block runs these commands"),
    Rule("docs/cluster.md", "wavekv cluster up\n", "cluster-ray-job", order=0),
    Rule("docs/cluster.md", ".venv/bin/python -m pytest -q tests/test_compose.py tests/", None,
         "the cluster tests, which CI runs itself"),
    Rule("docs/serve.md", "wavekv serve --store", None,
         "runs in the foreground until stopped; the same server runs in the local-cluster "
         "scenario (`wavekv cluster up --serve`) and in tests/inference_worker/serve"),
    Rule("docs/serve.md", ".venv/bin/python -m pytest -q tests/inference_worker/serve", None,
         "the server's tests, which CI runs itself"),
]  # fmt: skip


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        for lang, code in FENCE.findall((REPO / doc).read_text()):
            found.append(Block(doc, lang, code))
    return found


def rule_of(block: Block) -> Rule:
    text = block.code if block.code.endswith("\n") else block.code + "\n"
    matches = [r for r in RULES if r.doc == block.doc and text.startswith(r.starts)]
    assert len(matches) == 1, f"{block.doc}: block {block.first!r} matches {len(matches)} rules"
    return matches[0]


def test_every_example_is_run_or_skipped_with_a_reason() -> None:
    found = blocks()
    used = [rule_of(b) for b in found]
    assert sorted(map(id, used)) == sorted(map(id, RULES)), "a rule names no block"
    assert all(r.scenario or r.reason for r in used)


def scenario(name: str) -> list[Block]:
    chosen = [(rule_of(b).order, b) for b in blocks() if rule_of(b).scenario == name]
    return [b for _, b in sorted(chosen, key=lambda pair: pair[0])]


def script(steps: list[Block]) -> str:
    lines = ["set -euo pipefail"]
    for step in steps:
        lines.append(f"echo {shlex.quote(f'### {step.doc}: {step.first}')} >&2")
        if step.lang == "python":
            lines += ["python - <<'WAVEKV_DOC_EOF'", step.code.rstrip("\n"), "WAVEKV_DOC_EOF"]
        else:
            lines.append(step.code.rstrip("\n"))
    return "\n".join(lines) + "\n"


def run(name: str, cwd: Path, state: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WAVEKV_", "OPENAI_"))}
    env |= {
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "WAVEKV_CLUSTER_DIR": str(state),
    }
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        return subprocess.run(["bash", "-c", script(scenario(name))], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
    finally:  # a failed block must not leave a cluster behind
        subprocess.run([str(VENV_BIN / "wavekv"), "cluster", "down", "--state-dir", str(state)],
                       env=env, capture_output=True, timeout=300, check=False)  # fmt: skip


def check(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.mark.slow
def test_python_api_examples(tmp_path: Path) -> None:
    out = check(run("python-api", tmp_path, tmp_path / "cluster", timeout=600))
    assert "torch.Size([1, 4, 64])" in out and "below the index threshold" in out


@pytest.mark.slow
@pytest.mark.ray
def test_readme_first_run_on_the_local_cluster(tmp_path: Path) -> None:
    out = check(run("local-cluster", tmp_path, tmp_path / "cluster", timeout=900))
    assert '"id":"SmolLM2-135M-Instruct.Q4_1"' in out  # curl /v1/models
    assert "wavekv_worker_generated_tokens_total{" in out  # curl /metrics
    assert "wavekv_worker_wave_buffer_hit_ratio{" in out
    assert (tmp_path / "out.jsonl").is_file()  # the job's relative --output, made absolute
    assert not (tmp_path / "cluster" / "cluster.json").exists()  # `wavekv cluster down` ran
    assert "needed SIGKILL" not in out and "could not list Ray jobs" not in out


@pytest.mark.slow
@pytest.mark.ray
def test_cluster_doc_ray_job_submit(tmp_path: Path) -> None:
    check(run("cluster-ray-job", tmp_path, tmp_path / "cluster", timeout=900))
    assert '"id": "a"' in (tmp_path / "out.jsonl").read_text()


def test_repo_commands(tmp_path: Path) -> None:
    out = check(run("repo", REPO, tmp_path / "cluster", timeout=300))
    assert " passed" in out
