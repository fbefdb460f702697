"""`python -m kvstore_server` / `wavekv-store`: run the KV store server.

Command-line flags override WAVEKV_* environment variables (kvstore_server.settings). A bad value
ends the program with one line on stderr and exit code 2. `main(argv)` returns the exit code
(the `wavekv store` command calls it).
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread: the event loop runs one search at a time, and spinning BLAS threads
# fight gRPC's own threads for the cores (set the variables yourself to override).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from dataclasses import fields  # noqa: E402
from typing import NoReturn  # noqa: E402

from kvstore_server import logs  # noqa: E402
from kvstore_server.embedded import new_event_loop  # noqa: E402
from kvstore_server.server import StoreServer  # noqa: E402
from kvstore_server.settings import ServerSettings, SettingsError  # noqa: E402

log = logging.getLogger("kvstore_server")

HELP = {
    "host": "bind address (default 127.0.0.1)",
    "port": "port; 0 picks a free one (default 50051)",
    "capacity_bytes": "byte budget, e.g. 16GiB; 0 = unlimited (default: half of host RAM)",
    "auth_token_file": "token file: lines 'TOKEN [NAMESPACE ...]' (see docs/store.md)",
    "tls_cert": "PEM certificate chain (with --tls-key)",
    "tls_key": "PEM private key",
    "metrics_port": "serve Prometheus metrics on this port (0 = free port)",
    "metrics_host": "interface of the metrics endpoint (default 127.0.0.1)",
    "ready_file": "write {'port': ...} JSON here once serving",
    "max_message_bytes": "gRPC max message size (default 64MiB)",
    "fetch_chunk_bytes": "FetchClusters chunk size (default 1MiB)",
    "max_fetch_bytes": "largest FetchClusters response (default 256MiB)",
    "max_put_streams": "PutSegments streams open at once (default 64)",
    "stream_idle_s": "drop a put stream silent this long (default 30)",
    "max_concurrent_rpcs": "RPCs in progress at once (default 1024)",
    "max_namespaces": "namespaces with sequences or an arena (default 4096)",
    "sequence_ttl_s": "drop sequences untouched this long; 0 = never (default 600)",
    "shutdown_grace_s": "drain time after SIGTERM (default 5)",
    "shared_memory": "auto | off | require (default auto)",
    "shm_dir": "slab directory (default /dev/shm, or DATA_DIR/slabs with --data-dir)",
    "shm_slab_bytes": "slab file size (default 256MiB, sparse)",
    "max_lease_ttl_s": "longest same-host read lease (default 60)",
    "data_dir": "journal (+ slabs): re-attach every acknowledged segment after a restart",
    "fsync": "journal fsync policy: always | everysec | no (default everysec)",
    "log_level": "DEBUG | INFO | WARNING | ERROR",
    "log_format": "json | text",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit code 2 (argparse prints the whole usage block)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def program_name(argv0: str | None = None) -> str:
    """How the program was invoked: `wavekv-store`, or `python -m kvstore_server`."""
    base = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    return "python -m kvstore_server" if base in ("__main__.py", "") else base


def version() -> str:
    try:
        return importlib.metadata.version("wavekv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_settings(argv: list[str] | None = None, prog: str | None = None) -> ServerSettings:
    """Settings from the environment and argv; SystemExit(2) with one line on bad input."""
    prog = prog or program_name()
    p = _Parser(prog=prog, description="WaveKV KV store server")
    p.add_argument("--version", action="version", version=f"{prog} {version()}")
    for f in fields(ServerSettings):
        p.add_argument("--" + f.name.replace("_", "-"), metavar="VALUE", help=HELP[f.name])
    args = p.parse_args(argv)
    try:
        return ServerSettings.from_sources(flags=vars(args))
    except SettingsError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    try:
        settings = parse_settings(argv, prog)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    logs.configure(settings.log_level, settings.log_format)
    loop = new_event_loop()
    try:
        loop.run_until_complete(StoreServer(settings).serve_until_signal())
    except ValueError as exc:  # a file a setting names holds a bad value (the token file)
        print(f"{prog or program_name()}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a directory, file or port that cannot be used
        print(f"{prog or program_name()}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
