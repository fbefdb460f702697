"""The servicer's edge: undecodable messages, limits on streams, fetches and memory, and puts that
are all-or-nothing when a small tmpfs fills up; every failure with a precise status."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from client import (
    CapacityError,
    ClientOptions,
    FetchRequest,
    KVStoreClient,
    SequenceGeometry,
)
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.store_fixtures import StoreProcess, make_segment, reference_fetch
from wavekv_proto.codec import encode
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb
from wavekv_proto.wavekv.v1 import kvstore_pb2_grpc as pb_grpc

GEOMETRY = SequenceGeometry(1, 4, 64, "float32")
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["KVStore"].methods]


def _settings(**kw: object) -> ServerSettings:
    return ServerSettings(port=0, log_format="text", log_level="ERROR", **kw)  # type: ignore[arg-type]


def _header(seg, namespace: str = "ns", sid: str = "s", rows: int | None = None):  # type: ignore[no-untyped-def]
    keys = encode(seg.keys, with_data=False)
    values = encode(seg.values, with_data=False)
    if rows is not None:
        keys.shape[0] = values.shape[0] = rows
    return pb.PutSegmentsRequest(
        header=pb.SegmentHeader(
            namespace=namespace,
            sequence_id=sid,
            layer=seg.layer,
            kv_head=seg.kv_head,
            centroids=encode(seg.centroids),
            sizes=encode(np.asarray(seg.sizes)),
            value_sums=encode(seg.value_sums),
            offsets=encode(np.asarray(seg.offsets)),
            keys=keys,
            values=values,
        )
    )


def test_undecodable_messages_get_invalid_argument_on_every_rpc() -> None:
    with EmbeddedStore(_settings()) as server, grpc.insecure_channel(server.target) as channel:
        garbage = b"\x0a\xff\xff\xff\xff\x0f"  # a length-delimited field longer than the message
        for name in METHODS:
            path = f"/wavekv.v1.KVStore/{name}"
            with pytest.raises(grpc.RpcError) as info:
                if name == "PutSegments":
                    channel.stream_unary(path)(iter([garbage]))
                elif name == "FetchClusters":
                    list(channel.unary_stream(path)(garbage))
                else:
                    channel.unary_unary(path)(garbage)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "not a valid wavekv.v1." in info.value.details(), name


def test_echoed_strings_are_truncated() -> None:
    with EmbeddedStore(_settings()) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.KVStoreStub(channel)
        for request in (
            pb.GetSequenceRequest(namespace="ns", sequence_id="x" * 100_000),
            pb.GetSequenceRequest(namespace="n" * 100_000, sequence_id="s"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetSequence(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "(100000 characters)" in info.value.details()
            assert len(info.value.details()) < 300


class _OpenStream:
    """A PutSegments stream that sent `messages` and then waits (until `close`)."""

    def __init__(self, stub: pb_grpc.KVStoreStub, messages: list) -> None:
        self._done = threading.Event()
        self.future = stub.PutSegments.future(self._stream(messages))

    def _stream(self, messages: list) -> Iterator:
        yield from messages
        self._done.wait()

    def close(self) -> None:
        self._done.set()


def _wait_reserved(client: KVStoreClient, nbytes: int) -> None:
    """Until the store holds `nbytes` for streams in flight (RPC round trips, no sleeping)."""
    deadline = time.monotonic() + 30
    while client.get_stats().reserved_bytes != nbytes:
        assert time.monotonic() < deadline, client.get_stats()


def test_limits_on_put_streams_idle_streams_and_capacity_in_flight() -> None:
    rng = np.random.default_rng(1)
    seg = make_segment(rng, 0, 0, 10, 64, "float32", max_size=4)  # <= 40 rows: ~25 KB
    big = make_segment(rng, 0, 1, 100, 64, "float32", max_size=4)  # ~150 KB
    settings = _settings(max_put_streams=2, stream_idle_s=1.0, capacity_bytes=96 << 10)
    with (
        EmbeddedStore(settings) as server,
        KVStoreClient(server.target, ClientOptions(namespace="ns")) as client,
        grpc.insecure_channel(server.target) as channel,
    ):
        client.create_sequence("s", GEOMETRY)
        stub = pb_grpc.KVStoreStub(channel)
        with pytest.raises(CapacityError, match="capacity_bytes=98304"):  # refused at its header
            client.put_segments("s", [big])
        a = _OpenStream(stub, [_header(seg)])  # reserves at its header, then goes quiet
        _wait_reserved(client, seg_bytes := _nbytes(seg))
        with pytest.raises(CapacityError, match=f"reserved_bytes={seg_bytes} by puts in flight"):
            client.put_segments("s", [make_segment(rng, 0, 2, 50, 64, "float32", max_size=4)])
        b = _OpenStream(stub, [_header(seg)])
        _wait_reserved(client, 2 * seg_bytes)
        with pytest.raises(CapacityError, match="max_put_streams=2"):  # a third stream
            client.put_segments("s", [seg])
        for stream in (a, b):  # idle streams are dropped after stream_idle_s
            with pytest.raises(grpc.RpcError) as info:
                stream.future.result(timeout=30)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "stream_idle_s=1" in info.value.details()
            stream.close()
        assert client.get_stats().reserved_bytes == 0
        assert client.get_sequence("s").num_segments == 0
        client.put_segments("s", [seg])  # the capacity is free again
        n = len(seg.sizes)
        (got,) = client.fetch_clusters([FetchRequest("s", 0, 0, np.arange(n))])
        want, _ = reference_fetch([seg], list(range(n)))
        assert np.array_equal(got.keys.numpy(), want.numpy())


def _nbytes(seg) -> int:  # type: ignore[no-untyped-def]
    arrays = (seg.centroids, np.asarray(seg.sizes, np.int64), seg.value_sums, seg.offsets)
    return sum(np.asarray(a).nbytes for a in arrays) + 2 * seg.keys.numel() * 4


def test_fetch_responses_are_bounded() -> None:
    seg = make_segment(np.random.default_rng(2), 0, 0, 64, 64, "float32")
    with (
        EmbeddedStore(_settings(max_fetch_bytes=1 << 20)) as server,
        KVStoreClient(server.target, ClientOptions(namespace="ns")) as client,
    ):
        client.create_sequence("s", GEOMETRY)
        client.put_segments("s", [seg])
        request = [FetchRequest("s", 0, h, []) for h in range(4)]
        client.fetch_clusters(request)  # empty entries: fine
        many = [FetchRequest("s", 0, 0, np.arange(64))] * 20  # ~5 MiB in one call
        with pytest.raises(CapacityError, match="max_fetch_bytes=1048576"):
            client.fetch_clusters(many)


def test_huge_row_count_is_resource_exhausted_not_unknown() -> None:
    seg = make_segment(np.random.default_rng(3), 0, 0, 4, 64, "float32")
    with (
        EmbeddedStore(_settings(capacity_bytes=0)) as server,
        KVStoreClient(server.target, ClientOptions(namespace="ns")) as client,
        grpc.insecure_channel(server.target) as channel,
    ):
        client.create_sequence("s", GEOMETRY)
        stub = pb_grpc.KVStoreStub(channel)
        header = _header(seg, rows=1 << 44)  # 2**53 bytes of K/V announced
        header.header.offsets.CopyFrom(encode(np.array([0, 0, 0, 0, 1 << 44], np.int64)))
        header.header.sizes.CopyFrom(encode(np.array([0, 0, 0, 1 << 44], np.int64)))
        with pytest.raises(grpc.RpcError) as info:
            stub.PutSegments(iter([header]))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        assert client.get_stats().reserved_bytes == 0


def _small_tmpfs_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && echo ok"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return probe.stdout.strip() == "ok"


@pytest.mark.skipif(not _small_tmpfs_available(), reason="cannot mount a tmpfs (user namespaces)")
def test_put_is_all_or_nothing_when_a_small_tmpfs_is_full(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    script = (
        f'mount -t tmpfs -o size=8m tmpfs {shm} && exec {sys.executable} -m kvstore_server "$@"'
    )
    args = ["--shm-dir", str(shm), "--shm-slab-bytes", "2MiB", "--capacity-bytes", "0"]
    launcher = ["unshare", "-rm", "sh", "-c", script, "sh"]
    store = StoreProcess(*args, launcher=launcher).start()
    rng = np.random.default_rng(4)
    small = [make_segment(rng, 0, h, 8, 64, "float32") for h in range(4)]
    big = [make_segment(rng, 0, h, 500, 64, "float32", max_size=16) for h in range(4)]
    try:
        with KVStoreClient(store.target, ClientOptions(namespace="ns", timeout_s=30)) as client:
            client.create_sequence("s", GEOMETRY)
            client.put_segments("s", small)
            used = client.get_stats().bytes_used
            with pytest.raises(CapacityError) as info:  # 4 x ~4 MiB does not fit in 8 MiB
                client.put_segments("s", big)
            assert "No space left on device" in info.value.details
            info_after = client.get_sequence("s")
            assert client.get_stats().bytes_used == used
            assert (info_after.num_segments, info_after.num_clusters) == (4, 32)
            for h in range(4):
                (got,) = client.fetch_clusters([FetchRequest("s", 0, h, np.arange(8))])
                want, _ = reference_fetch([small[h]], list(range(8)))
                assert np.array_equal(got.keys.numpy(), want.numpy())
            client.put_segments("s", big[:1])  # what fits still goes in
    finally:
        store.kill()


def test_a_fetch_stream_is_not_disturbed_by_a_delete_and_reuse_mid_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    seg = make_segment(rng, 0, 0, 256, 64, "float32", max_size=32)  # ~4 MiB of K/V
    n = len(seg.sizes)
    settings = _settings(fetch_chunk_bytes=64 << 10, shared_memory="require", shm_dir=str(tmp_path))
    with (
        EmbeddedStore(settings) as server,
        KVStoreClient(server.target, ClientOptions(namespace="ns")) as client,
        grpc.insecure_channel(server.target) as channel,
    ):
        client.create_sequence("s", GEOMETRY)
        client.put_segments("s", [seg])
        request = pb.FetchClustersRequest(
            namespace="ns",
            entries=[
                pb.FetchEntry(sequence_id="s", cluster_ids=encode(np.arange(n, dtype=np.int64)))
            ],
        )
        stream = pb_grpc.KVStoreStub(channel).FetchClusters(request)
        header = next(stream).header  # the server is streaming, a reader that is slow
        client.delete_sequence("s")  # frees the extent the stream reads from...
        client.create_sequence("t", GEOMETRY)  # ...and an allocation that could reuse it
        client.put_segments("t", [make_segment(rng, 0, 0, 256, 64, "float32", max_size=32)])
        payload = bytearray(header.total_bytes)
        for msg in stream:
            payload[msg.chunk.offset : msg.chunk.offset + len(msg.chunk.data)] = msg.chunk.data
        layout = header.layouts[0]
        rows = layout.num_rows
        keys = np.frombuffer(payload, np.float32, rows * 64, layout.keys_offset)
        want, _ = reference_fetch([seg], list(range(n)))
        assert np.array_equal(keys.reshape(rows, 64), want.numpy())
