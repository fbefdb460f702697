"""Local cluster on 127.0.0.1: the docker-compose topology as plain processes.

    python -m inference_worker.cluster up [--worker-nodes N] [--num-cpus C] [--state-dir D]
    python -m inference_worker.cluster status
    python -m inference_worker.cluster env      # shell exports for ray job submit / the SDK
    python -m inference_worker.cluster down

`up` starts the KV store (`python -m kvstore_server`), a Ray head (GCS, dashboard, job server) and
optional extra Ray worker nodes, waits until each answers (store health, dashboard, node count)
within a bounded deadline, and records pids, ports and addresses in the state dir so `status`,
`env` and `down` work from any other process. Ray runs with token authentication; the token is
in the state dir. Settings come from WAVEKV_* variables (inference_worker.settings), flags win.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inference_worker import cluster_procs as procs
from inference_worker.cluster_probes import (
    ClusterDown,
    alive_ray_nodes,
    ray_head_ready,
    stop_running_jobs,
    store_healthy,
    wait_for,
    wait_store_port,
)
from inference_worker.cluster_procs import ProcessId
from inference_worker.settings import ClusterSettings

logger = logging.getLogger("inference_worker.cluster")

STATE_FILE = "cluster.json"
LOOPBACK = "127.0.0.1"
# Extra nodes start through Ray's CLI wrapped to stay on loopback (see that module).
RAY_NODE_LAUNCHER = [sys.executable, "-m", "inference_worker.cluster_ray_node"]
# Bound on Ray's own drain phase after SIGTERM (Ray's default is 30 s); `down` stops jobs first.
DRAIN_TIMEOUT_S = 5.0
ENV_COMMAND = "python -m inference_worker.cluster env"


@dataclass(slots=True)
class Component:
    """One started process: what it is, its pinned id and where its output goes."""

    name: str  # "store", "ray-head", "ray-worker-0", ...
    pid: int
    start_ticks: int
    log: str

    @property
    def process(self) -> ProcessId:
        return ProcessId(self.pid, self.start_ticks)


@dataclass(slots=True)
class ClusterState:
    """Everything `status`, `env` and `down` need, saved as JSON in the state dir."""

    state_dir: str
    ray_temp_dir: str  # short /tmp path: Ray's unix sockets must fit in 107 bytes
    auth_token_path: str
    store_address: str = ""
    gcs_address: str = ""
    dashboard_url: str = ""
    expected_nodes: int = 1
    components: list[Component] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        raw["components"] = [Component(**c) for c in raw["components"]]
        return cls(**raw)

    def leaders(self) -> list[ProcessId]:
        return [c.process for c in self.components]

    def token(self) -> str:
        return Path(self.auth_token_path).read_text().strip()

    def client_env(self) -> dict[str, str]:
        """Variables a client needs: `ray job submit` (address + token) and the store address."""
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.auth_token_path,
            "WAVEKV_STORE_ADDRESS": self.store_address,
        }


def _ray_binary() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise ClusterDown("the `ray` command is not installed next to this Python or on PATH")
    return found


def _base_env(state: ClusterState) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_DISABLE_USAGE_STATS"] = "1"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = state.auth_token_path
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = str(DRAIN_TIMEOUT_S)
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _start(
    state: ClusterState, name: str, argv: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = Path(state.state_dir) / f"{name}.log"
    popen = procs.spawn(argv, log, env)
    pinned = procs.pin(popen.pid)
    state.components.append(Component(name, pinned.pid, pinned.start_ticks, str(log)))
    state.save()
    logger.info("started %s (pid %d), log %s", name, popen.pid, log)
    return popen


def _start_store(state: ClusterState, settings: ClusterSettings) -> None:
    ready = Path(state.state_dir) / "store.ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "kvstore_server", "--host", LOOPBACK]
    argv += ["--port", str(settings.store_port), "--ready-file", str(ready)]
    if settings.store_capacity_bytes is not None:
        argv += ["--capacity-bytes", str(settings.store_capacity_bytes)]
    popen = _start(state, "store", argv, _base_env(state))
    port = wait_store_port(ready, popen, settings.startup_timeout_s)
    state.store_address = f"{LOOPBACK}:{port}"
    state.save()
    if not store_healthy(state.store_address, settings.startup_timeout_s):
        log = state.components[-1].log
        raise ClusterDown(f"store at {state.store_address} is not SERVING; see {log}")


def _node_resources(settings: ClusterSettings, num_gpus: int | None) -> list[str]:
    args = []
    if settings.num_cpus is not None:
        args.append(f"--num-cpus={settings.num_cpus}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    if settings.object_store_bytes is not None:
        args.append(f"--object-store-memory={settings.object_store_bytes}")
    return args


def _head_command(state: ClusterState, settings: ClusterSettings) -> list[str]:
    gcs_port = int(state.gcs_address.rsplit(":", 1)[1])
    dash_port = int(state.dashboard_url.rsplit(":", 1)[1])
    # Like the compose file: with worker nodes the head keeps no GPU, the workers get them.
    gpus = 0 if settings.worker_nodes else settings.num_gpus
    head = [_ray_binary(), "start", "--head", f"--port={gcs_port}", *_node_common(state)]
    head += [*_node_resources(settings, gpus), f"--dashboard-host={LOOPBACK}"]
    head += [f"--dashboard-port={dash_port}", f"--ray-client-server-port={procs.free_port()}"]
    return [*head, f"--dashboard-agent-listen-port={procs.free_port()}"]


def _worker_command(state: ClusterState, settings: ClusterSettings) -> list[str]:
    worker = [*RAY_NODE_LAUNCHER, "start", f"--address={state.gcs_address}"]
    worker += [*_node_common(state), *_node_resources(settings, settings.num_gpus)]
    return [*worker, f"--dashboard-agent-listen-port={procs.free_port()}"]


def _node_common(state: ClusterState) -> list[str]:
    common = ["--block", f"--node-ip-address={LOOPBACK}", f"--temp-dir={state.ray_temp_dir}"]
    return [*common, "--disable-usage-stats"]


def _start_ray(state: ClusterState, settings: ClusterSettings) -> None:
    state.gcs_address = f"{LOOPBACK}:{settings.ray_port or procs.free_port()}"
    state.dashboard_url = f"http://{LOOPBACK}:{settings.dashboard_port or procs.free_port()}"
    env = _base_env(state) | {"WAVEKV_STORE_ADDRESS": state.store_address}
    # Ray's head metrics endpoints default to fixed ports; free ones let clusters coexist.
    head_env = env | {
        "AUTOSCALER_METRIC_PORT": str(procs.free_port()),
        "DASHBOARD_METRIC_PORT": str(procs.free_port()),
    }
    started = [_start(state, "ray-head", _head_command(state, settings), head_env)]
    wait_for(
        lambda: ray_head_ready(state.dashboard_url, state.token()),
        started,
        settings.startup_timeout_s,
        f"Ray head dashboard/job server at {state.dashboard_url}",
    )
    for index in range(settings.worker_nodes):
        worker = _worker_command(state, settings)
        started.append(_start(state, f"ray-worker-{index}", worker, env))
    state.expected_nodes = 1 + settings.worker_nodes
    state.save()
    wait_for(
        lambda: alive_ray_nodes(state.dashboard_url, state.token()) >= state.expected_nodes,
        started,
        settings.startup_timeout_s,
        f"{state.expected_nodes} alive Ray nodes",
    )


def _new_state(state_dir: Path) -> ClusterState:
    state_dir.mkdir(parents=True, exist_ok=True)
    token_path = state_dir / "ray_auth_token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as token_file:
        token_file.write(secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix="wkv-ray-", dir="/tmp")
    return ClusterState(str(state_dir), temp_dir, str(token_path))


def up(settings: ClusterSettings) -> ClusterState:
    """Start store, Ray head and worker nodes; on any failure stop whatever was started."""
    existing = ClusterState.load(settings.state_dir)
    if existing is not None and any(procs.is_alive(p) for p in existing.leaders()):
        raise ClusterDown(f"a cluster is already up (state in {settings.state_dir}); run `down`")
    if existing is not None:
        _cleanup_files(existing)
    state = _new_state(settings.state_dir)
    try:
        _start_store(state, settings)
        _start_ray(state, settings)
    except BaseException:
        logger.error("bring-up failed; stopping what was started (logs in %s)", state.state_dir)
        down(settings.state_dir, settings.shutdown_timeout_s)
        raise
    return state


def _cleanup_files(state: ClusterState) -> None:
    shutil.rmtree(state.ray_temp_dir, ignore_errors=True)
    Path(state.auth_token_path).unlink(missing_ok=True)
    (Path(state.state_dir) / STATE_FILE).unlink(missing_ok=True)


def down(state_dir: Path, timeout_s: float = 30.0) -> list[ProcessId]:
    """Stop every cluster process (graceful, then SIGKILL); return those that needed SIGKILL."""
    state = ClusterState.load(state_dir)
    if state is None:
        logger.info("no cluster recorded in %s", state_dir)
        return []
    _stop_jobs(state)
    killed = procs.stop(state.leaders(), timeout_s)
    if killed:
        logger.warning("needed SIGKILL: pids %s", [p.pid for p in killed])
    _cleanup_files(state)
    return killed


def _stop_jobs(state: ClusterState) -> None:
    """Stop running Ray jobs first: Ray drains a busy node for a while before it exits."""
    if not state.dashboard_url:
        return
    try:
        stopped = stop_running_jobs(state.dashboard_url, state.token())
    except (OSError, ValueError) as err:  # head already gone or not up yet
        logger.info("could not list Ray jobs (%s); stopping processes directly", err)
        return
    if stopped:
        logger.info("asked Ray to stop running jobs %s", stopped)


def status(state: ClusterState) -> dict[str, object]:
    """Liveness of each process plus store health and the Ray node count."""
    report: dict[str, object] = {c.name: procs.is_alive(c.process) for c in state.components}
    report["store_serving"] = bool(state.store_address) and store_healthy(state.store_address, 3.0)
    try:
        report["ray_nodes_alive"] = alive_ray_nodes(state.dashboard_url, state.token())
    except (OSError, ValueError):  # dashboard gone, token file gone, garbled reply
        report["ray_nodes_alive"] = 0
    return report


def _healthy(state: ClusterState, report: dict[str, object]) -> bool:
    processes_up = all(report[c.name] for c in state.components)
    nodes = report["ray_nodes_alive"]
    return processes_up and bool(report["store_serving"]) and nodes == state.expected_nodes


def _print_summary(state: ClusterState) -> None:
    print(f"store:      {state.store_address}")
    print(f"ray gcs:    {state.gcs_address}")
    print(f"dashboard:  {state.dashboard_url}  (job server)")
    print(f"state dir:  {state.state_dir}")
    print(f'client environment (eval "$({ENV_COMMAND} --state-dir {state.state_dir})"):')
    for key, value in state.client_env().items():
        print(f"  export {key}={shlex.quote(value)}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference_worker.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "status", "env", "down"])
    parser.add_argument(
        "--state-dir", type=Path, help="default: $WAVEKV_CLUSTER_DIR, else ~/.wavekv/cluster"
    )
    parser.add_argument("--worker-nodes", type=int, help="extra Ray worker nodes (default 0)")
    parser.add_argument("--num-cpus", type=int, help="CPUs per Ray node (default: detected)")
    parser.add_argument("--num-gpus", type=int, help="GPUs per Ray node (default: detected)")
    parser.add_argument("--store-capacity-bytes", type=int, help="KV store capacity")
    parser.add_argument("--timeout", type=float, help="seconds for each readiness wait")
    return parser.parse_args(argv)


def _settings(args: argparse.Namespace) -> ClusterSettings:
    settings = ClusterSettings.from_env()
    overrides = {
        "state_dir": args.state_dir,
        "worker_nodes": args.worker_nodes,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "store_capacity_bytes": args.store_capacity_bytes,
        "startup_timeout_s": args.timeout,
    }
    values = asdict(settings) | {k: v for k, v in overrides.items() if v is not None}
    return ClusterSettings(**values)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parse_args(argv)
    try:
        settings = _settings(args)
        return _run(args.command, settings)
    except (ClusterDown, ValueError) as err:
        logger.error("%s", err)
        return 1


def _run(command: str, settings: ClusterSettings) -> int:
    if command == "up":
        _print_summary(up(settings))
        return 0
    if command == "down":
        down(settings.state_dir, settings.shutdown_timeout_s)
        return 0
    state = ClusterState.load(settings.state_dir)
    if state is None:
        logger.error("no cluster recorded in %s", settings.state_dir)
        return 1
    if command == "env":
        for key, value in state.client_env().items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    report = status(state)
    for name, outcome in report.items():
        print(f"{name:16s} {outcome}")
    _print_summary(state)
    return 0 if _healthy(state, report) else 1


if __name__ == "__main__":
    sys.exit(main())
