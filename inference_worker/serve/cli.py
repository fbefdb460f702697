"""`wavekv serve`: start the OpenAI-compatible server and keep it up until Ctrl-C or SIGTERM.

    wavekv serve [--store HOST:PORT] [--model PATH] [--host 127.0.0.1] [--port 8000] \
        [--replicas N] [--attention retroinfer|full] [--ray-address ADDR]

Joins the Ray cluster at --ray-address / $RAY_ADDRESS (e.g. the local cluster's GCS), else starts
a local Ray on loopback; starts Ray Serve's HTTP proxy on --host:--port (0: a free port) and the
application (one replica per GPU worker: --replicas), waits until it is healthy and prints its
base URL. Stopping the command shuts Ray Serve down (it owns Serve on that cluster). Every flag
also reads a WAVEKV_* variable (inference_worker.settings.ServeSettings); flags win.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from argparse import RawDescriptionHelpFormatter
from types import FrameType

from inference_worker.settings import CliParser, ServeSettings, SettingsError, load, usage_error

log = logging.getLogger("inference_worker.serve")
PROG = "python -m inference_worker.serve"

FLAGS = {  # flag -> help; each maps to the ServeSettings field of the same name
    "--host": "HTTP bind address (env WAVEKV_SERVE_HOST; default 127.0.0.1)",
    "--port": "HTTP port; 0 picks a free one (env WAVEKV_SERVE_PORT; default 8000)",
    "--replicas": "engine replicas, one GPU each (CPU without GPUs) (default 1)",
    "--model": "GGUF file or safetensors folder (default: the bundled SmolLM2)",
    "--served-model-name": "the `model` clients name (default: the model file's name)",
    "--store": "kvstore_server HOST:PORT (env WAVEKV_STORE_ADDRESS; default: in-process)",
    "--namespace": "store namespace (tenant; default wavekv)",
    "--token-file": "file holding the store's bearer token",
    "--attention": "retroinfer | full (default retroinfer)",
    "--max-batch-size": "sequences each replica decodes together (default 8)",
    "--max-ongoing-requests": "requests a replica accepts at once (default 64)",
    "--default-max-tokens": "max_tokens of requests that set none (default 256)",
    "--ray-address": "Ray cluster to join (default $RAY_ADDRESS, else a local loopback Ray)",
    "--app-name": "Ray Serve application name (default wavekv)",
}


def parse_args(argv: list[str] | None, prog: str = PROG) -> ServeSettings:
    parser = CliParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    for flag, text in FLAGS.items():
        parser.add_argument(flag, help=text)
    args = parser.parse_args(argv)
    flags = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag in FLAGS
    }
    return load(ServeSettings, flags)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = parse_args(argv, prog)
    except SettingsError as err:
        return usage_error(prog, err)
    stop = threading.Event()
    try:
        url = start(settings)
        # after ray.init, which installs its own SIGTERM handler
        previous = {
            sig: signal.signal(sig, _setter(stop)) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        print(f"wavekv serve: OpenAI API at {url}/v1 (Ctrl-C to stop)", flush=True)
        stop.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    finally:
        shutdown(settings)
    return 0


def _setter(event: threading.Event):  # type: ignore[no-untyped-def]
    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    return handler


def start(settings: ServeSettings) -> str:
    """Ray (joined or local), Serve's proxy and the application; returns the base URL."""
    import ray
    from ray import serve

    from inference_worker.cluster_procs import free_port
    from inference_worker.serve.app import build_app

    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    port = settings.port or free_port()
    serve.start(http_options={"host": settings.host, "port": port}, proxy_location="HeadOnly")
    serve.run(build_app(settings), name=settings.app_name, route_prefix="/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    return f"http://{host}:{port}"


def shutdown(settings: ServeSettings) -> None:
    """Remove the application, its metrics directory and Serve itself."""
    import ray
    from ray import serve

    from inference_worker.serve.directory import remove_directory

    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
    finally:
        remove_directory(settings.app_name)
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
