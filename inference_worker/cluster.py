"""Local cluster on 127.0.0.1: the docker-compose topology as plain processes.

    wavekv cluster up [--worker-nodes N] [--num-cpus C] [--serve] [--state-dir D]
    wavekv cluster status
    wavekv cluster env      # shell exports for `ray job submit`, the SDK and the openai client
    wavekv cluster down

(`python -m inference_worker.cluster ...` is the same command.) `up` starts the KV store (with its
Prometheus endpoint), a Ray head (GCS, dashboard, job server), optional extra Ray worker nodes
and, with `--serve`, the OpenAI-compatible server (`wavekv serve`) on the cluster; it waits until
each answers (store health, dashboard, node count, the server's /health) within a bounded
deadline, and records pids, ports and addresses in the state dir so `status`, `env` and `down`
work from any other process. Ray runs with token authentication; the token is in the state dir.
Settings come from WAVEKV_* variables (inference_worker.settings), flags win.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from argparse import RawDescriptionHelpFormatter as _RawHelp
from pathlib import Path

from inference_worker import cluster_procs as procs
from inference_worker.cluster_probes import (
    ClusterDown,
    alive_ray_nodes,
    http_ok,
    ray_head_ready,
    stop_running_jobs,
    store_healthy,
    wait_for,
    wait_store_ready,
)
from inference_worker.cluster_procs import ProcessId
from inference_worker.cluster_state import STATE_FILE, ClusterState, Component
from inference_worker.settings import (
    CliParser,
    ClusterSettings,
    SettingsError,
    load,
    usage_error,
)

logger = logging.getLogger("inference_worker.cluster")

LOOPBACK = "127.0.0.1"
# Extra nodes start through Ray's CLI wrapped to stay on loopback (see that module).
RAY_NODE_LAUNCHER = [sys.executable, "-m", "inference_worker.cluster_ray_node"]
SERVE_COMMAND = [sys.executable, "-m", "inference_worker.serve"]
# Bound on Ray's own drain phase after SIGTERM (Ray's default is 30 s); `down` stops jobs first.
DRAIN_TIMEOUT_S = 5.0
ENV_COMMAND = "wavekv cluster env"
__all__ = ["ClusterState", "Component", "down", "main", "status", "up"]


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
    argv += ["--metrics-port", "0"]  # metrics on, on a free loopback port
    if settings.store_capacity_bytes is not None:
        argv += ["--capacity-bytes", str(int(settings.store_capacity_bytes))]
    popen = _start(state, "store", argv, _base_env(state))
    port, metrics_port = wait_store_ready(ready, popen, settings.startup_timeout_s)
    state.store_address = f"{LOOPBACK}:{port}"
    state.store_metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics" if metrics_port else ""
    state.save()
    if not store_healthy(state.store_address, settings.startup_timeout_s):
        log = state.components[-1].log
        raise ClusterDown(f"store at {state.store_address} is not SERVING; see {log}")


def _start_serve(state: ClusterState, settings: ClusterSettings) -> None:
    """`wavekv serve` as a Ray driver of this cluster; waits for its /health."""
    port = settings.serve_port or procs.free_port()
    argv = [*SERVE_COMMAND, "--ray-address", state.gcs_address, "--host", LOOPBACK]
    argv += ["--port", str(port), "--store", state.store_address]
    env = _base_env(state) | {"WAVEKV_STORE_ADDRESS": state.store_address}
    serve = _start(state, "serve", argv, env)
    state.serve_url = f"http://{LOOPBACK}:{port}"
    state.save()
    wait_for(
        lambda: http_ok(f"{state.serve_url}/health"),
        [serve],
        settings.startup_timeout_s,
        f"wavekv serve at {state.serve_url}/health",
    )


def _node_resources(settings: ClusterSettings, num_gpus: int | None) -> list[str]:
    args = []
    if settings.num_cpus is not None:
        args.append(f"--num-cpus={settings.num_cpus}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    if settings.object_store_bytes is not None:
        args.append(f"--object-store-memory={int(settings.object_store_bytes)}")
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
    """Start store, Ray head, worker nodes (and the server); on failure stop what was started."""
    existing = ClusterState.load(settings.state_dir)
    if existing is not None and any(procs.is_alive(p) for p in existing.leaders()):
        raise ClusterDown(f"a cluster is already up (state in {settings.state_dir}); run `down`")
    if existing is not None:
        _cleanup_files(existing)
    state = _new_state(settings.state_dir)
    try:
        _start_store(state, settings)
        _start_ray(state, settings)
        if settings.serve:
            _start_serve(state, settings)
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
    # The server first: it shuts Ray Serve down through the Ray cluster, which must still be up.
    first = [c.process for c in state.components if c.name == "serve"]
    rest = [c.process for c in state.components if c.name != "serve"]
    killed = procs.stop(first, timeout_s) if first else []
    killed += procs.stop(rest, timeout_s)
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
    """Liveness of each process plus store health, the Ray node count and the server."""
    report: dict[str, object] = {c.name: procs.is_alive(c.process) for c in state.components}
    report["store_serving"] = bool(state.store_address) and store_healthy(state.store_address, 3.0)
    try:
        report["ray_nodes_alive"] = alive_ray_nodes(state.dashboard_url, state.token())
    except (OSError, ValueError):  # dashboard gone, token file gone, garbled reply
        report["ray_nodes_alive"] = 0
    if state.serve_url:
        report["serve_healthy"] = _safe_http_ok(f"{state.serve_url}/health")
    return report


def _safe_http_ok(url: str) -> bool:
    try:
        return http_ok(url)
    except (OSError, ValueError):
        return False


def _healthy(state: ClusterState, report: dict[str, object]) -> bool:
    processes_up = all(report[c.name] for c in state.components)
    nodes = report["ray_nodes_alive"]
    serving = bool(report.get("serve_healthy", True))
    return (
        processes_up and bool(report["store_serving"]) and nodes == state.expected_nodes and serving
    )


def _print_summary(state: ClusterState) -> None:
    print(f"store:         {state.store_address}")
    print(f"store metrics: {state.store_metrics_url}")
    print(f"ray gcs:       {state.gcs_address}")
    print(f"dashboard:     {state.dashboard_url}  (job server)")
    if state.serve_url:
        print(f"serve:         {state.serve_url}/v1  (OpenAI API; /metrics, /health)")
    print(f"state dir:     {state.state_dir}")
    print(f'client environment (eval "$({ENV_COMMAND} --state-dir {state.state_dir})"):')
    for key, value in state.client_env().items():
        print(f"  export {key}={shlex.quote(value)}")


FLAGS = {  # flag -> help; each maps to the ClusterSettings field of the same name
    "--state-dir": "default: $WAVEKV_CLUSTER_DIR, else ~/.wavekv/cluster",
    "--worker-nodes": "extra Ray worker nodes (default 0)",
    "--num-cpus": "CPUs per Ray node (default: detected)",
    "--num-gpus": "GPUs per Ray node (default: detected)",
    "--object-store-bytes": "Ray object store per node, e.g. 2GiB (default: Ray's)",
    "--store-capacity-bytes": "KV store capacity, e.g. 16GiB (default: the store's)",
    "--serve-port": "HTTP port of `wavekv serve` with --serve (default: a free port)",
    "--timeout": "seconds for each readiness wait (default 120)",
}


def _parser(prog: str) -> CliParser:
    parser = CliParser(prog=prog, description=__doc__, formatter_class=_RawHelp)
    parser.add_argument("command", choices=["up", "status", "env", "down"])
    for flag, text in FLAGS.items():
        parser.add_argument(flag, help=text)
    parser.add_argument(
        "--serve", action="store_true", default=None, help="also start `wavekv serve`"
    )
    return parser


def _settings(args: object) -> ClusterSettings:
    names = [flag[2:].replace("-", "_") for flag in FLAGS] + ["serve"]
    flags = {name: getattr(args, name) for name in names}
    flags["startup_timeout_s"] = flags.pop("timeout")
    return load(ClusterSettings, flags)


def main(argv: list[str] | None = None, prog: str = "python -m inference_worker.cluster") -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parser(prog).parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as err:
        return usage_error(prog, err)
    try:
        return _run(args.command, settings)
    except ClusterDown as err:
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
