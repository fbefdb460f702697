"""Tenant isolation: namespace A cannot read one byte of namespace B through any RPC, mapped
memory, statistics or metrics; freed memory is zeroed."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from client import (
    ClientOptions,
    FetchRequest,
    KVStoreClient,
    NotFoundError,
    SearchQuery,
    SequenceGeometry,
)
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.store_fixtures import make_segment
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb
from wavekv_proto.wavekv.v1 import kvstore_pb2_grpc as pb_grpc

GEOMETRY = SequenceGeometry(1, 2, 64, "float32")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    settings = ServerSettings(
        port=0,
        log_format="text",
        log_level="WARNING",
        shared_memory="require",
        shm_dir=str(tmp_path_factory.mktemp("shm")),
        shm_slab_bytes=4 << 20,
        metrics_port=0,
    )
    with EmbeddedStore(settings) as s:
        yield s


def _shm(server: EmbeddedStore, namespace: str) -> KVStoreClient:
    options = ClientOptions(namespace=namespace, shared_memory="require", lease_ttl_s=0.5)
    return KVStoreClient(server.target, options)


def _slab_files(directory: Path, prefix: str) -> list[Path]:
    return sorted(directory.glob(prefix + "*"))


def test_a_cannot_read_b_through_rpcs_or_mapped_memory(server: EmbeddedStore) -> None:
    rng = np.random.default_rng(11)
    with _shm(server, "tenant-a") as a, _shm(server, "tenant-b") as b:
        a.create_sequence("s", GEOMETRY)
        a.put_segments("s", [make_segment(rng, 0, h, 30, 64, "float32") for h in range(2)])
        secret = make_segment(rng, 0, 0, 30, 64, "float32")
        b.create_sequence("s", GEOMETRY)
        b.create_sequence("only-b", GEOMETRY)
        b.put_segments("s", [secret])
        needle = secret.keys.numpy().tobytes()[:256]  # 256 random bytes of B's keys
        arena_a, arena_b = a.shared_arena(), b.shared_arena()
        assert arena_a is not None and arena_b is not None
        assert arena_a.arena_id != arena_b.arena_id
        assert arena_a.file_prefix != arena_b.file_prefix
        # every slab file A's reader is told about, mapped: none holds a byte of B's keys
        directory = Path(arena_a.directory)
        a_files = _slab_files(directory, arena_a.file_prefix)
        assert len(a_files) >= 2
        for path in a_files:
            assert needle not in path.read_bytes()
        assert any(needle in p.read_bytes() for p in _slab_files(directory, arena_b.file_prefix))
        # A asking for B's sequence by name, through every read path, finds nothing
        for call in (
            lambda: a.fetch_clusters([FetchRequest("only-b", 0, 0, [0])]),
            lambda: a.fetch_descriptors([FetchRequest("only-b", 0, 0, [0])]),
            lambda: a.get_sequence("only-b"),
            lambda: a.search_clusters([SearchQuery("only-b", 0, 0, np.ones((1, 64)))], 1),
            lambda: a.delete_sequence("only-b"),
        ):
            with pytest.raises(NotFoundError, match="namespace='tenant-a'"):
                call()
        assert [s.sequence_id for s in a.list_sequences()] == ["s"]
        (mine,) = a.fetch_clusters([FetchRequest("s", 0, 0, np.arange(30))])
        assert needle not in mine.keys.numpy().tobytes()
        # A releasing B's lease ids does nothing to B (leases are per namespace arena)
        lease = b.fetch_descriptors([FetchRequest("s", 0, 0, [1, 2])]).lease_id
        shard = a._aio._shards[0]
        reply = shard.sync_stub().ReleaseLeases(
            pb.ReleaseLeasesRequest(namespace="tenant-a", lease_ids=[lease])
        )
        assert reply.released == 0
        b.done_with_lease(lease)


def test_freed_memory_is_zeroed_before_anyone_maps_it_again(server: EmbeddedStore) -> None:
    rng = np.random.default_rng(12)
    with _shm(server, "tenant-c") as c:
        c.create_sequence("keep", GEOMETRY)
        c.put_segments("keep", [make_segment(rng, 0, 0, 4, 64, "float32")])
        c.create_sequence("s", GEOMETRY)
        seg = make_segment(rng, 0, 1, 40, 64, "float32")
        c.put_segments("s", [seg])
        batch = c.fetch_descriptors([FetchRequest("s", 0, 1, np.arange(40))])
        entry = batch.entries[0]
        arena = c.shared_arena()
        assert arena is not None
        slab = arena.slab(entry.slab)  # C's own read-only mapping of the slab
        start = entry.keys_row * entry.row_bytes
        region = slab.buf[start : start + int(entry.cluster_offsets[-1]) * entry.row_bytes]
        assert region.any()
        c.done_with_lease(batch.lease_id)
        c.release_leases()
        c.delete_sequence("s")
        assert not region.any()  # the freed extent reads as zeros through the old mapping
        (still,) = c.fetch_clusters([FetchRequest("keep", 0, 0, np.arange(4))])
        assert still.keys.shape[0] > 0


def test_stats_and_metrics_are_per_namespace(server: EmbeddedStore) -> None:
    rng = np.random.default_rng(13)
    with (
        KVStoreClient(server.target, ClientOptions(namespace="stats-a")) as a,
        KVStoreClient(server.target, ClientOptions(namespace="stats-b")) as b,
    ):
        a.create_sequence("s", GEOMETRY)
        a.put_segments("s", [make_segment(rng, 0, 0, 8, 64, "float32")])
        b.create_sequence("s", GEOMETRY)
        b.create_sequence("t", GEOMETRY)
        sa, sb = a.get_stats(), b.get_stats()
        assert (sa.num_sequences, sb.num_sequences) == (1, 2)
        assert sa.bytes_used == a.get_sequence("s").bytes_used
        assert sb.bytes_used == b.get_sequence("s").bytes_used + b.get_sequence("t").bytes_used
        assert "PutSegments" in sa.rpcs and "PutSegments" not in sb.rpcs
        assert sb.rpcs["CreateSequence"].count == 2
    assert server.server.metrics is not None
    host, port = server.server.metrics.server.server_address[:2]
    assert host == "127.0.0.1"  # loopback unless --metrics-host says otherwise
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert f'wavekv_store_used_bytes{{namespace="stats-a"}} {float(sa.bytes_used)}' in text
    assert 'wavekv_store_sequences{namespace="stats-b"} 2.0' in text
    assert 'wavekv_store_rpcs_total{code="OK",method="PutSegments",namespace="stats-a"} 1.0' in text
    assert "wavekv_store_capacity_bytes " in text and "wavekv_bytes_used" not in text


def test_namespaces_are_validated_on_every_rpc(server: EmbeddedStore) -> None:
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.KVStoreStub(channel)
    long = "n" * 100_000
    for bad, fragment in (
        ("", "namespace is empty"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        (long, "100000 characters"),
    ):
        for method, request in (
            ("GetSequence", pb.GetSequenceRequest(namespace=bad, sequence_id="s")),
            ("ListSequences", pb.ListSequencesRequest(namespace=bad)),
            ("GetStats", pb.GetStatsRequest(namespace=bad)),
            ("GetArena", pb.GetArenaRequest(namespace=bad)),
            ("RenewSequences", pb.RenewSequencesRequest(namespace=bad, sequence_ids=["s"])),
        ):
            with pytest.raises(grpc.RpcError) as info:
                getattr(stub, method)(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert fragment in info.value.details() and len(info.value.details()) < 300
    channel.close()
