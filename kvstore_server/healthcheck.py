"""Health probe for a running store: `python -m kvstore_server.healthcheck --address HOST:PORT`.

Asks the standard gRPC health service (grpc.health.v1) whether the store is SERVING and exits 0 if
it is, 1 otherwise. Used by the docker-compose healthcheck and by the local-cluster command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ProbeConfig:
    """What to probe and how long to wait for it."""

    address: str  # "host:port" of the store
    service: str = ""  # health service name; "" is the whole server
    timeout_s: float = 5.0  # bound on connecting plus the Check call
    tls_root_cert: Path | None = None  # PEM roots when the store serves TLS

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"address must be HOST:PORT, got {self.address!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")


def _open_channel(config: ProbeConfig) -> grpc.Channel:
    if config.tls_root_cert is None:
        return grpc.insecure_channel(config.address)
    roots = config.tls_root_cert.read_bytes()
    return grpc.secure_channel(config.address, grpc.ssl_channel_credentials(roots))


def check(config: ProbeConfig) -> bool:
    """True when the store answers SERVING within `config.timeout_s` seconds."""
    with _open_channel(config) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=config.timeout_s)
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=config.service)
            reply = stub.Check(request, timeout=config.timeout_s)
        except grpc.FutureTimeoutError:
            logger.error("store at %s not reachable within %.1fs", config.address, config.timeout_s)
            return False
        except grpc.RpcError as err:
            logger.error("health check of %s failed: %s", config.address, err.code().name)
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        logger.error("store at %s reports %s", config.address, status_name)
    return serving


def _parse_args(argv: list[str] | None) -> ProbeConfig:
    parser = argparse.ArgumentParser(
        prog="python -m kvstore_server.healthcheck", description=__doc__
    )
    parser.add_argument("--address", required=True, help="store address HOST:PORT")
    parser.add_argument("--service", default="", help="health service name ('' = server)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    parser.add_argument("--tls-root-cert", type=Path, default=None, help="PEM root certificates")
    args = parser.parse_args(argv)
    try:
        return ProbeConfig(args.address, args.service, args.timeout, args.tls_root_cert)
    except ValueError as err:
        parser.error(str(err))
        raise


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = _parse_args(argv)
    return 0 if check(config) else 1


if __name__ == "__main__":
    sys.exit(main())
