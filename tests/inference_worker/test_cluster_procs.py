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
from inference_worker.settings import ClusterSettings, SettingsError, load

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
    ready.write_text(json.dumps({"host": "127.0.0.1", "port": 4321, "pid": 1, "metrics_port": 99}))
    assert (read_port(ready), read_port(ready, "metrics_port")) == (4321, 99)
    ready.write_text(json.dumps({"port": 4321, "metrics_port": None}))
    assert read_port(ready, "metrics_port") is None
    ready.write_text(json.dumps({"port": 0}))
    with pytest.raises(ValueError, match="no valid port"):
        read_port(ready)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WAVEKV_CLUSTER_WORKER_NODES": "two"}, "WAVEKV_CLUSTER_WORKER_NODES='two': Input should"),
        ({"WAVEKV_CLUSTER_WORKER_NODES": "-1"}, "WAVEKV_CLUSTER_WORKER_NODES='-1': Input should"),
        ({"WAVEKV_DASHBOARD_PORT": "70000"}, "WAVEKV_DASHBOARD_PORT='70000': Input should be less"),
        ({"WAVEKV_CLUSTER_STARTUP_TIMEOUT_S": "0"}, "WAVEKV_CLUSTER_STARTUP_TIMEOUT_S='0'"),
        ({"WAVEKV_CLUSTER_NUM_CPUS": "1.5"}, "WAVEKV_CLUSTER_NUM_CPUS='1.5'"),
        ({"WAVEKV_CAPACITY_BYTES": "16 parsecs"}, "WAVEKV_CAPACITY_BYTES='16 parsecs'"),
    ],
)
def test_bad_settings_fail_fast(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as err:
        load(ClusterSettings)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_settings_from_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAVEKV_CLUSTER_DIR", str(tmp_path))
    monkeypatch.setenv("WAVEKV_CLUSTER_WORKER_NODES", "2")
    monkeypatch.setenv("WAVEKV_CLUSTER_NUM_CPUS", "1")
    monkeypatch.setenv("WAVEKV_CAPACITY_BYTES", "16GiB")
    settings = load(ClusterSettings)
    assert (settings.state_dir, settings.worker_nodes, settings.num_cpus) == (tmp_path, 2, 1)
    assert settings.store_capacity_bytes == 16 << 30
    flagged = load(ClusterSettings, {"worker_nodes": "3", "store_capacity_bytes": "512MiB"})
    assert (flagged.worker_nodes, flagged.store_capacity_bytes) == (3, 512 << 20)
    monkeypatch.delenv("WAVEKV_CLUSTER_WORKER_NODES")
    assert load(ClusterSettings).worker_nodes == 0


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


def test_bad_flag_is_a_one_line_usage_error_before_anything_starts(tmp_path: Path) -> None:
    result = run_cli("up", "--state-dir", str(tmp_path), "--store-capacity-bytes", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m inference_worker.cluster: error: --store-capacity-bytes='-1': "
        "could not parse value and unit from byte string"
    ]
    assert not (tmp_path / "store.log").exists()


def test_bad_variable_is_a_one_line_usage_error(tmp_path: Path) -> None:
    result = run_cli("status", "--state-dir", str(tmp_path), WAVEKV_DASHBOARD_PORT="abc")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "WAVEKV_DASHBOARD_PORT='abc'" in result.stderr and "Traceback" not in result.stderr


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
