"""Process bookkeeping, settings and failure paths of the local cluster (no Ray started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference_worker import cluster
from inference_worker import cluster_procs as procs
from inference_worker.cluster_probes import ClusterDown, read_port
from inference_worker.settings import ClusterSettings, SettingsError

# A parent that ignores SIGTERM, with a child in the same session and a grandchild that starts
# its own session (like a Ray job entrypoint). It prints the two descendants' pids when ready.
TREE = """
import os, signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import sys; sys.stdin.read()"
child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
grand = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         start_new_session=True)
print(child.pid, grand.pid, flush=True)
sys.stdin.read()
"""


def spawn_tree(tmp_path: Path) -> tuple[subprocess.Popen[str], list[procs.ProcessId]]:
    leader = subprocess.Popen(
        [sys.executable, "-c", TREE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    pids = [int(p) for p in leader.stdout.readline().split()]
    return leader, [procs.pin(leader.pid), *(procs.pin(p) for p in pids)]


def test_members_cover_session_and_descendants(tmp_path: Path) -> None:
    leader, tree = spawn_tree(tmp_path)
    try:
        found = procs.members([tree[0]])
        assert set(tree) <= found
        assert procs.pin(os.getpid()) not in found
    finally:
        procs.stop([tree[0]], timeout_s=5)
        leader.wait()


def test_stop_escalates_to_sigkill_and_leaves_nothing(tmp_path: Path) -> None:
    leader, tree = spawn_tree(tmp_path)
    killed = procs.stop([tree[0]], timeout_s=1.0)
    leader.wait()
    assert tree[0] in killed  # it ignored SIGTERM
    assert not [p for p in tree if procs.is_alive(p)]


def test_pinned_ids_survive_pid_reuse_checks() -> None:
    me = procs.pin(os.getpid())
    assert procs.is_alive(me)
    assert not procs.is_alive(procs.ProcessId(me.pid, me.start_ticks + 1))
    assert procs.wait_gone([procs.ProcessId(me.pid, me.start_ticks + 1)], 0.1) == set()


def test_read_port_accepts_store_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    ready.write_text(json.dumps({"host": "127.0.0.1", "port": 4321, "pid": 1}))
    assert read_port(ready) == 4321
    ready.write_text(json.dumps({"port": 0}))
    with pytest.raises(ValueError, match="no valid port"):
        read_port(ready)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WAVEKV_CLUSTER_WORKER_NODES": "two"}, "WAVEKV_CLUSTER_WORKER_NODES must be an integer"),
        ({"WAVEKV_CLUSTER_WORKER_NODES": "-1"}, "worker_nodes must be >= 0, got -1"),
        ({"WAVEKV_DASHBOARD_PORT": "70000"}, "dashboard_port must be in [0, 65535], got 70000"),
        ({"WAVEKV_CLUSTER_STARTUP_TIMEOUT_S": "0"}, "startup_timeout_s must be > 0, got 0.0"),
        ({"WAVEKV_CLUSTER_NUM_CPUS": "1.5"}, "'1.5'"),
    ],
)
def test_bad_settings_fail_fast(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        ClusterSettings.from_env(env)
    assert message in str(err.value)


def test_settings_from_env(tmp_path: Path) -> None:
    env = {"WAVEKV_CLUSTER_DIR": str(tmp_path), "WAVEKV_CLUSTER_WORKER_NODES": "2"}
    settings = ClusterSettings.from_env(env | {"WAVEKV_CLUSTER_NUM_CPUS": "1"})
    assert (settings.state_dir, settings.worker_nodes, settings.num_cpus) == (tmp_path, 2, 1)
    assert ClusterSettings.from_env({}).worker_nodes == 0


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "inference_worker.cluster", *args]
    full_env = os.environ | env
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=full_env)


def test_failed_bring_up_cleans_up(tmp_path: Path) -> None:
    """The store rejects its settings: `up` fails fast, names the cause, leaves nothing."""
    result = run_cli("up", "--state-dir", str(tmp_path), WAVEKV_LOG_FORMAT="bogus")
    assert result.returncode == 1
    assert "store ready file" in result.stderr and "exited with" in result.stderr
    assert "log_format='bogus'" in (tmp_path / "store.log").read_text()
    assert cluster.ClusterState.load(tmp_path) is None
    assert not (tmp_path / "ray_auth_token").exists()


def test_bad_flag_is_rejected_before_anything_starts(tmp_path: Path) -> None:
    result = run_cli("up", "--state-dir", str(tmp_path), "--store-capacity-bytes", "-1")
    assert result.returncode == 1
    assert "store_capacity_bytes must be > 0, got -1" in result.stderr
    assert not (tmp_path / "store.log").exists()


def test_up_refuses_while_a_cluster_is_recorded_alive(tmp_path: Path) -> None:
    state = cluster._new_state(tmp_path)
    sleeper = procs.spawn(
        [sys.executable, "-c", "import signal; signal.pause()"], tmp_path / "x.log", os.environ
    )
    pinned = procs.pin(sleeper.pid)
    state.components.append(cluster.Component("store", pinned.pid, pinned.start_ticks, "x.log"))
    state.save()
    try:
        with pytest.raises(ClusterDown, match="already up"):
            cluster.up(ClusterSettings(state_dir=tmp_path))
    finally:
        assert cluster.down(tmp_path, timeout_s=10) == []
        sleeper.wait()
    assert not procs.is_alive(pinned)
    assert cluster.ClusterState.load(tmp_path) is None


def test_status_and_down_without_a_cluster(tmp_path: Path) -> None:
    assert run_cli("status", "--state-dir", str(tmp_path)).returncode == 1
    assert run_cli("down", "--state-dir", str(tmp_path)).returncode == 0
