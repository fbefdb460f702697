"""`python -m kvstore_server.healthcheck` against a real gRPC health service on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference_worker.cluster_procs import free_port
from kvstore_server.healthcheck import ProbeConfig, check, main


@pytest.fixture()
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def test_serving_store_passes(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert main(["--address", address, "--timeout", "5"]) == 0


def test_not_serving_store_fails(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert not check(ProbeConfig(address, timeout_s=5))


def test_unknown_service_fails(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert not check(ProbeConfig(address, service="wavekv.v1.NoSuch", timeout_s=5))


def test_unreachable_store_fails_within_timeout() -> None:
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "kvstore_server.healthcheck", "--address", address]
    result = subprocess.run([*argv, "--timeout", "0.5"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "not reachable" in result.stderr


@pytest.mark.parametrize(
    ("address", "timeout", "message"),
    [("nohost", "1", "'nohost'"), ("127.0.0.1:x", "1", "'127.0.0.1:x'"), ("h:1", "0", "0.0")],
)
def test_bad_arguments_are_rejected(
    address: str, timeout: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--address", address, "--timeout", timeout])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
