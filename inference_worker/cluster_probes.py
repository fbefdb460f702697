"""Readiness probes for the local cluster: store ready file and health, Ray dashboard and nodes.

Waits are bounded by a deadline and paced by waiting on the started processes themselves, so a
component that dies during start-up fails the wait at once instead of at the deadline.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

POLL_S = 0.2  # pace of readiness checks (the wait is on the process, so exits end it early)
HTTP_TIMEOUT_S = 3.0


class ClusterDown(RuntimeError):
    """A cluster component did not start, died, or is not recorded."""


def wait_for(
    ready: Callable[[], bool],
    processes: Sequence[subprocess.Popen[bytes]],
    timeout_s: float,
    what: str,
) -> None:
    """Return once `ready()` is true; raise if a process exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in processes:
            if proc.poll() is not None:
                raise ClusterDown(
                    f"waiting for {what}: {proc.args!r} exited with {proc.returncode}"
                )
        if _safe(ready):
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClusterDown(f"{what} not ready within {timeout_s:.0f}s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            processes[0].wait(timeout=min(POLL_S, left))


def _safe(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except (OSError, ValueError):  # refused connection, HTTP error, half-written JSON
        return False


def read_port(ready_file: Path, key: str = "port") -> int | None:
    """A port in the store's ready file (a JSON object; a bare number is the gRPC port).

    `key` "port" must hold a valid port; "metrics_port" may be absent or null (None)."""
    payload: Any = json.loads(ready_file.read_text())
    port = payload.get(key) if isinstance(payload, dict) else payload if key == "port" else None
    if port is None and key != "port":
        return None
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"ready file {ready_file} holds no valid {key}: {payload!r}")
    return port


def wait_store_port(ready_file: Path, store: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The store's gRPC port once it has written its ready file."""
    wait_for(
        lambda: read_port(ready_file) is not None,
        [store],
        timeout_s,
        f"store ready file {ready_file}",
    )
    port = read_port(ready_file)
    assert port is not None
    return port


def wait_store_ready(
    ready_file: Path, store: subprocess.Popen[bytes], timeout_s: float
) -> tuple[int, int | None]:
    """(gRPC port, metrics port or None) once the store has written its ready file."""
    port = wait_store_port(ready_file, store, timeout_s)
    return port, read_port(ready_file, "metrics_port")


def http_ok(url: str) -> bool:
    """True when GET `url` answers 200 (raises OSError when nothing answers)."""
    return _get(url, None) is not None


def store_healthy(address: str, timeout_s: float) -> bool:
    """Ask the store's grpc.health.v1 service through `python -m kvstore_server.healthcheck`."""
    argv = [sys.executable, "-m", "kvstore_server.healthcheck", "--address", address]
    argv += ["--timeout", str(timeout_s)]
    result = subprocess.run(argv, capture_output=True, timeout=timeout_s + 30, check=False)
    return result.returncode == 0


def _get(url: str, token: str | None, method: str = "GET") -> bytes:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return bytes(response.read())


def ray_head_ready(dashboard_url: str, token: str) -> bool:
    """GCS reachable through the dashboard and the job server answering an authorized call."""
    if _get(f"{dashboard_url}/api/gcs_healthz", None).strip() != b"success":
        return False
    jobs = json.loads(_get(f"{dashboard_url}/api/jobs/", token))
    return isinstance(jobs, list)


def alive_ray_nodes(dashboard_url: str, token: str) -> int:
    """Number of Ray nodes whose raylet is ALIVE, from the dashboard's node summary."""
    body = json.loads(_get(f"{dashboard_url}/nodes?view=summary", token))
    summary = body.get("data", {}).get("summary", [])
    return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")


def stop_running_jobs(dashboard_url: str, token: str) -> list[str]:
    """Ask the job server to stop every job that has not finished; return their ids."""
    jobs = json.loads(_get(f"{dashboard_url}/api/jobs/", token))
    live = [  # drivers that joined with ray.init (e.g. `wavekv serve`) have no submission id
        j["submission_id"]
        for j in jobs
        if j.get("submission_id") and j.get("status") in ("PENDING", "RUNNING")
    ]
    for submission_id in live:
        _get(f"{dashboard_url}/api/jobs/{submission_id}/stop", token, method="POST")
    return live
