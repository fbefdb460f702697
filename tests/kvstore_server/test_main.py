"""The server as users run it: `python -m kvstore_server` with --ready-file, metrics, SIGTERM;
plus the protocol codegen staleness check and the codec."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client import ClientOptions, KVStoreClient, SequenceGeometry
from kvstore_server.__main__ import main
from kvstore_server.embedded import EmbeddedStore
from wavekv_proto import codec

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_log(proc: subprocess.Popen, msg: str) -> dict:
    assert proc.stderr is not None
    for line in proc.stderr:  # blocking reads of the JSON log: no sleeping
        doc = json.loads(line)
        if doc["msg"] == msg:
            return doc
    raise AssertionError(f"server exited before logging {msg!r}: rc={proc.wait()}")


def test_cli_ready_file_metrics_and_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    cmd = [
        sys.executable,
        "-m",
        "kvstore_server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
        "--shutdown-grace-s",
        "1",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        serving = _wait_for_log(proc, "serving")
        doc = json.loads(ready.read_text())
        assert doc["port"] == serving["port"] > 0 and doc["pid"] == proc.pid
        with KVStoreClient(f"127.0.0.1:{doc['port']}", ClientOptions(namespace="cli")) as client:
            client.wait_ready()
            info = client.create_sequence("s", SequenceGeometry(1, 1, 8, "float16"))
            assert info.incarnation_id == doc["incarnation_id"]
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{doc['metrics_port']}/metrics")
            .read()
            .decode()
        )
        assert (
            'wavekv_store_rpcs_total{code="OK",method="CreateSequence",namespace="cli"} 1.0'
            in metrics
        )
        assert 'wavekv_store_sequences{namespace="cli"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        _wait_for_log(proc, "stopped")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_generated_protocol_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_proto.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int64])
def test_codec_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    x = (torch.randn(5, 7) * 100).to(dtype)
    msg = codec.encode(x)
    assert len(msg.data) == x.numel() * x.element_size() and list(msg.shape) == [5, 7]
    assert torch.equal(codec.decode_torch(msg), x)
    arr, name = codec.decode_numpy(msg)
    assert codec.torch_dtype(name) == dtype and arr.shape == (5, 7)


def test_codec_rejects_inconsistent_tensors() -> None:
    msg = codec.encode(np.zeros((2, 3), np.float32))
    msg.data = msg.data[:-4]
    with pytest.raises(ValueError, match=r"shape=\[2, 3\] dtype=float32 needs 24 bytes, got 20"):
        codec.decode_numpy(msg)
    with pytest.raises(TypeError, match="numpy dtype"):
        codec.encode(np.zeros(3, np.complex64))


def test_health_and_reflection_list_the_service(store_server: EmbeddedStore) -> None:
    with grpc.insecure_channel(store_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="wavekv.v1.KVStore"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
        assert {"wavekv.v1.KVStore", "grpc.health.v1.Health"} <= names


def _run(*args: str, env: dict[str, str] | None = None, argv0: str | None = None):  # type: ignore[no-untyped-def]
    cmd = [argv0] if argv0 else [sys.executable, "-m", "kvstore_server"]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_bad_values_are_one_line_usage_errors_with_exit_code_2() -> None:
    for args, env, want in (
        ((), {"WAVEKV_PORT": "abc"}, "WAVEKV_PORT='abc' is not a valid number"),
        (("--capacity-bytes", "16XB"), {}, "--capacity-bytes='16XB' is not a valid byte size"),
        (("--no-such-flag",), {}, "unrecognized arguments: --no-such-flag"),
    ):
        result = _run(*args, env=env)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and want in lines[0] and "Traceback" not in result.stderr
        assert lines[0].startswith("python -m kvstore_server: error:")


def test_version_and_help_name_the_program_as_invoked() -> None:
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.startswith("python -m kvstore_server 0.")
    script = Path(sys.executable).with_name("wavekv-store")
    result = _run("--help", argv0=str(script))
    assert result.returncode == 0 and result.stdout.startswith("usage: wavekv-store ")
    assert "--capacity-bytes" in result.stdout and "16GiB" in result.stdout


def test_main_returns_the_exit_code() -> None:
    assert main(["--version"]) == 0
    assert main(["--port", "x"]) == 2
