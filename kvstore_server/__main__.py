"""`python -m kvstore_server --host 127.0.0.1 --port 50051 [options]`.

Command-line flags override WAVEKV_* environment variables (kvstore_server.settings).
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread: the event loop runs one search at a time, and spinning BLAS threads
# fight gRPC's own threads for the cores (set the variables yourself to override).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import logging  # noqa: E402

from kvstore_server import logs  # noqa: E402
from kvstore_server.embedded import new_event_loop  # noqa: E402
from kvstore_server.server import StoreServer  # noqa: E402
from kvstore_server.settings import ServerSettings  # noqa: E402

log = logging.getLogger("kvstore_server")


def parse_args(argv: list[str] | None = None) -> ServerSettings:
    p = argparse.ArgumentParser(
        prog="python -m kvstore_server", description="WaveKV KV store server"
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port; 0 picks a free one (default 50051)")
    p.add_argument("--capacity-bytes", type=int, help="byte budget; 0 = unlimited")
    p.add_argument("--auth-token-file", help="require 'authorization: Bearer <token>'")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--ready-file", help="write {'port': ...} JSON here once serving")
    p.add_argument("--max-message-bytes", type=int, help="gRPC max message size")
    p.add_argument("--fetch-chunk-bytes", type=int, help="FetchClusters chunk size (default 1 MiB)")
    p.add_argument("--shutdown-grace-s", type=float, help="drain time after SIGTERM")
    p.add_argument("--shared-memory", help="auto | off | require (default auto)")
    p.add_argument("--shm-dir", help="directory of shared-memory slab files (default /dev/shm)")
    p.add_argument("--shm-slab-bytes", type=int, help="slab file size (default 256 MiB)")
    p.add_argument("--max-lease-ttl-s", type=float, help="longest same-host read lease (60)")
    p.add_argument("--log-level", help="DEBUG | INFO | WARNING | ERROR")
    p.add_argument("--log-format", help="json | text")
    return ServerSettings.from_env(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logs.configure(settings.log_level, settings.log_format)
    loop = new_event_loop()
    try:
        loop.run_until_complete(StoreServer(settings).serve_until_signal())
    finally:
        loop.close()


if __name__ == "__main__":
    main()
