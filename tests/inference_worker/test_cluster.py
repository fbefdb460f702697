"""The local cluster end to end: `python -m inference_worker.cluster up`, `ray job submit`, `down`.

One bring-up for the whole module (store + Ray head + one extra Ray worker node, 1 CPU each);
tests run in file order and the last one tears the cluster down and looks for strays.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import ClientOptions, KVStoreClient
from inference_worker import cluster_procs as procs
from inference_worker.cluster import ClusterState

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "scripts" / "cluster_job_probe.py"  # run as a script: its folder holds no
# package that would shadow the real ones (tests/client would shadow `client`)
RAY = str(Path(sys.executable).parent / "ray")
CLI = [sys.executable, "-m", "inference_worker.cluster"]
WAVEKV = str(Path(sys.executable).parent / "wavekv")
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):\d+$")


def cluster_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cluster")
    args = ["--state-dir", str(path), "--worker-nodes", "1", "--num-cpus", "1", "--timeout", "180"]
    result = cluster_cli("up", *args)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield path
    finally:
        cluster_cli("down", "--state-dir", str(path))


@pytest.fixture(scope="module")
def state(state_dir: Path) -> ClusterState:
    loaded = ClusterState.load(state_dir)
    assert loaded is not None
    return loaded


def submit(state: ClusterState, *entrypoint: str, timeout: float = 300) -> str:
    """`ray job submit` with the cluster's address and token; returns the job's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= state.client_env()
    argv = [RAY, "job", "submit", "--address", state.dashboard_url, "--", *entrypoint]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "succeeded" in output, output
    return output


def test_status_from_another_process(state_dir: Path, state: ClusterState) -> None:
    result = cluster_cli("status", "--state-dir", str(state_dir), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"ray_nodes_alive\s+2\b", result.stdout), result.stdout
    assert re.search(r"store_serving\s+True\b", result.stdout), result.stdout
    assert state.store_address.startswith("127.0.0.1:")
    assert state.dashboard_url.startswith("http://127.0.0.1:")


def listening_sockets() -> list[tuple[str, int]]:
    """(local address, pid) of every listening TCP/UDP socket, from `ss -ltunp`."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    sockets = []
    for line in out.splitlines():
        local = line.split()[4]
        sockets += [(local, int(pid)) for pid in re.findall(r"pid=(\d+)", line)]
    return sockets


def test_everything_listens_on_loopback_only(state: ClusterState) -> None:
    pids = {p.pid for p in procs.members(state.leaders())}
    ours = [(local, pid) for local, pid in listening_sockets() if pid in pids]
    exposed = [(local, pid) for local, pid in ours if not LOOPBACK.match(local)]
    assert not exposed, f"cluster sockets not on loopback: {exposed}"
    ports = {int(local.rsplit(":", 1)[1]) for local, _ in ours}
    for address in (state.store_address, state.gcs_address, state.dashboard_url):
        assert int(address.rsplit(":", 1)[1]) in ports, (address, sorted(ports))


def test_job_submission_reaches_the_store_from_every_node(
    state: ClusterState, tmp_path: Path
) -> None:
    out = tmp_path / "probe.json"
    args = ["--store", state.store_address, "--output", str(out), "--namespace", "probe"]
    submit(state, "python", str(PROBE), *args)
    report = json.loads(out.read_text())
    assert len(report["nodes"]) == 2
    assert sorted(t["node_id"] for t in report["tasks"]) == sorted(report["nodes"])
    assert all(t["listed_while_alive"] and not t["listed_after_delete"] for t in report["tasks"])
    with KVStoreClient(state.store_address, ClientOptions(namespace="probe")) as client:
        assert client.list_sequences() == []
        incarnation = client.get_stats().incarnation_id
    assert {t["incarnation_id"] for t in report["tasks"]} == {incarnation}


def job_submit(state_dir: Path, cwd: Path, *job_args: str) -> subprocess.Popen[str]:
    """`wavekv job submit` of inference_worker.job on this cluster, from `cwd`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WAVEKV_"))}
    argv = [WAVEKV, "job", "submit", "--state-dir", str(state_dir), "--", *job_args]
    return subprocess.Popen(argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


def test_oversized_job_fails_at_once(state_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "prompt": "hi"}) + "\n")
    args = ["--input", "in.jsonl", "--output", "out.jsonl", "--attention", "full"]
    submit = job_submit(state_dir, tmp_path, *args, "--workers", "5")
    output, _ = submit.communicate(timeout=180)
    assert submit.returncode == 1, output
    assert "--workers 5 needs 5 CPU (one per InferenceWorker actor), but the Ray cluster has " \
        "2 CPU in total" in output  # fmt: skip
    assert not (tmp_path / "out.jsonl").exists()


def job_status(state: ClusterState, job_id: str) -> str:
    request = urllib.request.Request(f"{state.dashboard_url}/api/jobs/{job_id}")
    request.add_header("Authorization", f"Bearer {state.token()}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.loads(response.read())["status"])


def test_stopping_the_submitter_stops_the_job(
    state_dir: Path, state: ClusterState, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "prompt": "hi"}) + "\n")
    args = ["--input", "in.jsonl", "--output", "out.jsonl", "--attention", "full"]
    submit = job_submit(state_dir, tmp_path, *args, "--max-new-tokens", "4000")
    assert submit.stdout is not None
    line = submit.stdout.readline()
    match = re.match(r"submitted job (\S+) to ", line)
    assert match, line
    assert "--input " + str(tmp_path / "in.jsonl") in line  # made absolute on this side
    submit.send_signal(signal.SIGTERM)
    output, _ = submit.communicate(timeout=180)
    assert submit.returncode == 130, output
    assert f"stopped job {match[1]}" in output
    assert job_status(state, match[1]) == "STOPPED"


def start_blocking_job(state: ClusterState, marker: str) -> subprocess.Popen[bytes]:
    """Submit a job that prints `marker` and then blocks; return once its entrypoint runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | state.client_env()
    code = "import signal, sys; print(sys.argv[1], flush=True); signal.pause()"
    argv = [RAY, "job", "submit", "--address", state.dashboard_url, "--"]
    argv += ["python", "-c", code, marker]  # ray job submit shell-quotes each word
    submit = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert submit.stdout is not None
    fd = submit.stdout.fileno()
    deadline = time.monotonic() + 120
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while f"\n{marker}\n".encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and selector.select(left), f"job did not start: {seen!r}"
            chunk = os.read(fd, 1 << 16)
            assert chunk, f"ray job submit ended early: {seen!r}"
            seen += chunk
    return submit


def test_down_leaves_no_stray_processes(state_dir: Path, state: ClusterState) -> None:
    marker = f"wkv-running-job-{uuid.uuid4().hex}"
    submit = start_blocking_job(state, marker)
    group = procs.members(state.leaders())
    running_job = [p for p in group if marker in Path(f"/proc/{p.pid}/cmdline").read_text()]
    assert running_job, "the job entrypoint is not counted as a cluster process"
    result = cluster_cli("down", "--state-dir", str(state_dir), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [p for p in group if procs.is_alive(p)]
    sessions = {c.pid for c in state.components}
    ps = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True)
    strays = []
    for line in ps.stdout.splitlines():
        parts = line.split(None, 3)
        sid, stat, args = parts[1], parts[2], parts[3] if len(parts) > 3 else ""
        if stat.startswith("Z"):  # exited, only waiting for init to reap it
            continue
        ours = (state.ray_temp_dir, str(state_dir), marker)
        if int(sid) in sessions or any(text in args for text in ours):
            strays.append(line)
    assert not strays, strays
    assert ClusterState.load(state_dir) is None
    assert not Path(state.ray_temp_dir).exists()
    status = cluster_cli("status", "--state-dir", str(state_dir), timeout=60)
    assert status.returncode == 1
    submit.communicate(timeout=120)  # the submitting CLI ends once its job is gone
