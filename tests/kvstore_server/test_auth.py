"""TLS with a self-signed certificate generated here, and bearer-token auth."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import (
    ClientOptions,
    ClusterSegment,
    FetchRequest,
    KVStoreClient,
    PermissionDeniedError,
    RetryPolicy,
    SearchQuery,
    SequenceGeometry,
    UnauthenticatedError,
    UnavailableError,
)
from kvstore_server.auth import TokenTable
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.store_fixtures import make_segment, reference_fetch
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_and_token_round_trip(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    settings = ServerSettings(
        port=0, tls_cert=str(cert), tls_key=str(key), auth_token_file=str(token_file)
    )
    seg = make_segment(np.random.default_rng(0), 0, 0, 8, 16, "bfloat16")
    with EmbeddedStore(settings) as server:
        target = f"localhost:{server.server.port}"
        with KVStoreClient(
            target, ClientOptions(namespace="t", token="s3cret-token", tls_root_cert=cert)
        ) as client:
            client.wait_ready()
            client.create_sequence("s", SequenceGeometry(1, 1, 16, "bfloat16"))
            client.put_segments("s", [seg])
            (got,) = client.fetch_clusters([FetchRequest("s", 0, 0, [3, 1])])
            assert torch.equal(got.keys, reference_fetch([seg], [3, 1])[0])
        for token, fragment in ((None, "missing"), ("wrong", "wrong token")):
            with (
                KVStoreClient(
                    target, ClientOptions(namespace="t", token=token, tls_root_cert=cert)
                ) as bad,
                pytest.raises(UnauthenticatedError) as info,
            ):
                bad.fetch_clusters([FetchRequest("s", 0, 0, [0])])
            assert (
                info.value.code == grpc.StatusCode.UNAUTHENTICATED
                and fragment in info.value.details
            )
            with (
                KVStoreClient(
                    target, ClientOptions(namespace="t", token=token, tls_root_cert=cert)
                ) as bad,
                pytest.raises(UnauthenticatedError),
            ):
                bad.put_segments("s", [seg])
        with KVStoreClient(
            target, ClientOptions(namespace="t", token="s3cret-token", tls_root_cert=cert)
        ) as client:
            assert client.get_sequence("s").num_segments == 1  # rejected puts stored nothing
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(target, creds) as channel:  # health stays open without a token
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_client_cannot_talk_to_tls_server(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with (
        EmbeddedStore(ServerSettings(port=0, tls_cert=str(cert), tls_key=str(key))) as server,
        KVStoreClient(
            server.target,
            ClientOptions(namespace="t", timeout_s=2.0, retry=RetryPolicy(max_attempts=2)),
        ) as client,
        pytest.raises(UnavailableError),
    ):
        client.list_sequences()


GEOMETRY = SequenceGeometry(1, 1, 16, "bfloat16")


def _every_rpc(client: KVStoreClient, seg: ClusterSegment) -> dict[str, Callable[[], object]]:
    """One call of each RPC that names a namespace, for sequence 's' of (layer 0, kv_head 0)."""
    return {
        "CreateSequence": lambda: client.create_sequence(
            "s", SequenceGeometry(1, 1, 16, "bfloat16")
        ),
        "PutSegments": lambda: client.put_segments("s", [seg]),
        "SearchClusters": lambda: client.search_clusters(
            [SearchQuery("s", 0, 0, np.ones((2, 16), np.float32))], k=1
        ),
        "FetchClusters": lambda: client.fetch_clusters([FetchRequest("s", 0, 0, [0])]),
        "GetSequence": lambda: client.get_sequence("s"),
        "ListSequences": lambda: client.list_sequences(),
        "RenewSequences": lambda: client.renew_sequences(["s"]),
        "GetStats": lambda: client.get_stats(),
        "DeleteSequence": lambda: client.delete_sequence("s"),
    }


def test_tokens_are_bound_to_their_namespaces(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# token namespaces\ntok-a tenant-a\ntok-b tenant-b tenant-b2\nadmin *\n")
    seg = make_segment(np.random.default_rng(1), 0, 0, 4, 16, "bfloat16")
    settings = ServerSettings(port=0, auth_token_file=str(token_file), log_level="WARNING")
    with EmbeddedStore(settings) as server:
        with KVStoreClient(server.target, ClientOptions(namespace="tenant-a", token="tok-a")) as a:
            for name, call in _every_rpc(a, seg).items():
                if name != "DeleteSequence":
                    call()  # its own namespace: everything works
        with KVStoreClient(server.target, ClientOptions(namespace="tenant-a", token="tok-b")) as b:
            for call in _every_rpc(b, seg).values():
                with pytest.raises(PermissionDeniedError, match="may not use namespace='tenant-a'"):
                    call()
            for request in (
                pb.GetArenaRequest(namespace="tenant-a"),
                pb.ReleaseLeasesRequest(namespace="tenant-a", lease_ids=[1]),
            ):
                method = type(request).__name__.removesuffix("Request")
                shard = b._aio._shards[0]
                with pytest.raises(grpc.RpcError) as info:
                    getattr(shard.sync_stub(), method)(request, metadata=shard.metadata)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        with KVStoreClient(
            server.target, ClientOptions(namespace="tenant-a", token="admin")
        ) as adm:
            assert adm.get_sequence("s").num_segments == 1  # nothing of tenant-a was touched
            adm.delete_sequence("s")


def test_token_file_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 2"):
        TokenTable.parse("ok ns\nbad ns\x00x\n")
    with pytest.raises(ValueError, match="listed twice"):
        TokenTable.parse("t a\nt b\n")
    with pytest.raises(ValueError, match="no tokens"):
        TokenTable.parse("# nothing\n")
    assert TokenTable.parse("legacy-token\n").grants(b"Bearer legacy-token") == frozenset({"*"})
