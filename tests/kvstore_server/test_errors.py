"""Every bad input: the right status, a message naming the field, and stored data intact after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
import torch

from client import (
    CapacityError,
    ClientOptions,
    ClusterSegment,
    FailedPreconditionError,
    FetchRequest,
    InvalidArgumentError,
    KVStoreClient,
    KVStoreError,
    NotFoundError,
    SearchQuery,
    SequenceGeometry,
)
from client.errors import from_rpc_error
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.store_fixtures import make_segment, reference_fetch
from wavekv_proto.codec import encode
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb
from wavekv_proto.wavekv.v1 import kvstore_pb2_grpc as pb_grpc

DIM = 16
GEOMETRY = SequenceGeometry(2, 2, DIM, "bfloat16")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def stored(store_client: KVStoreClient) -> Iterator[tuple[KVStoreClient, ClusterSegment]]:
    """A sequence 's' with one segment at (layer 1, kv_head 1); checked intact after each test."""
    seg = make_segment(np.random.default_rng(0), 1, 1, 10, DIM, "bfloat16")
    store_client.create_sequence("s", GEOMETRY)
    store_client.put_segments("s", [seg])
    yield store_client, seg
    assert_intact(store_client, seg)


def assert_intact(client: KVStoreClient, seg: ClusterSegment, sequence_id: str = "s") -> None:
    info = client.get_sequence(sequence_id)
    assert (info.num_segments, info.num_clusters) == (1, 10)
    (got,) = client.fetch_clusters([FetchRequest(sequence_id, 1, 1, np.arange(10))])
    want_k, want_v = reference_fetch([seg], list(range(10)))
    assert torch.equal(got.keys, want_k) and torch.equal(got.values, want_v)


def fresh(**changes: object) -> ClusterSegment:
    seg = make_segment(np.random.default_rng(9), 1, 1, 4, DIM, "bfloat16")
    for name, value in changes.items():
        setattr(seg, name, value)
    return seg


@contextmanager
def expect(exc_type: type[KVStoreError], code: grpc.StatusCode, *fragments: str) -> Iterator[None]:
    with pytest.raises(exc_type) as info:
        yield
    assert info.value.code == code, info.value
    for fragment in fragments:
        assert fragment in info.value.details, (fragment, info.value.details)


def test_unknown_sequence(stored: tuple[KVStoreClient, ClusterSegment]) -> None:
    client, _ = stored
    with expect(NotFoundError, grpc.StatusCode.NOT_FOUND, "sequence_id='nope'"):
        client.fetch_clusters([FetchRequest("nope", 0, 0, [0])])
    with expect(NotFoundError, grpc.StatusCode.NOT_FOUND, "sequence_id='nope'"):
        client.put_segments("nope", [fresh()])
    with expect(NotFoundError, grpc.StatusCode.NOT_FOUND, "sequence_id='nope'"):
        client.search_clusters([SearchQuery("nope", 0, 0, np.zeros((2, DIM)))], k=1)
    with expect(NotFoundError, grpc.StatusCode.NOT_FOUND, "sequence_id='nope'"):
        client.delete_sequence("nope")


def raw_put(
    server: EmbeddedStore, namespace: str, segments: list[ClusterSegment], sequence_id: str = "s"
) -> None:
    """PutSegments of the segments as they are (no SDK checks): the store's own validation."""
    channel, stub = _raw_stub(server)
    msgs = []
    for seg in segments:
        msgs.append(_header(namespace, seg, sequence_id))
        for kv in (seg.keys, seg.values):
            raw = kv.view(torch.int16) if kv.dtype == torch.bfloat16 else kv
            msgs.append(pb.PutSegmentsRequest(data=pb.SegmentData(data=raw.numpy().tobytes())))
    with channel:
        try:
            stub.PutSegments(iter(msgs))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, server.target) from None


def both_reject(
    client: KVStoreClient, server: EmbeddedStore, segments: list[ClusterSegment], *fragments: str
) -> None:
    """The SDK refuses before sending, and the store refuses the same put sent raw."""
    with expect(InvalidArgumentError, INVALID, *fragments):
        client.put_segments("s", segments)
    with expect(InvalidArgumentError, INVALID, *fragments):
        raw_put(server, client.namespace, segments)


def test_shape_and_dtype_mismatch(
    stored: tuple[KVStoreClient, ClusterSegment], store_server: EmbeddedStore
) -> None:
    client, _ = stored
    seg = fresh()
    cases = [
        (fresh(keys=seg.keys.to(torch.float16)), "keys.dtype=float16"),
        (fresh(values=seg.values[:, :8].contiguous()), "values shape="),
        (
            fresh(keys=seg.keys[:, :8].contiguous(), values=seg.values[:, :8].contiguous()),
            "keys shape=",
        ),
        (fresh(centroids=np.zeros((4, DIM + 1), np.float32)), "centroids shape="),
        (fresh(value_sums=np.zeros((3, DIM), np.float32)), "value_sums shape="),
        (fresh(sizes=np.asarray(seg.sizes)[:3]), "sizes shape="),
    ]
    for bad, fragment in cases:  # a good segment first: nothing may be stored
        both_reject(client, store_server, [fresh(), bad], fragment)
    with expect(InvalidArgumentError, INVALID, "queries shape="):
        client.search_clusters([SearchQuery("s", 1, 1, np.zeros((2, DIM + 3)))], k=1)
    with expect(KVStoreError, grpc.StatusCode.ALREADY_EXISTS, "sequence_id='s'"):
        client.create_sequence("s", SequenceGeometry(2, 2, DIM, "float16"))


def test_float64_keys_are_refused_before_any_rpc(
    stored: tuple[KVStoreClient, ClusterSegment],
) -> None:
    client, _ = stored
    before = client.get_stats().rpcs["PutSegments"].count
    bad = fresh(keys=np.zeros((fresh().keys.shape[0], DIM)))  # numpy's default dtype
    with expect(InvalidArgumentError, INVALID, "segments[0].keys", "float64"):
        client.put_segments("s", [bad])
    with expect(InvalidArgumentError, INVALID, "requests[0].cluster_ids.dtype=float64"):
        client.fetch_clusters([FetchRequest("s", 1, 1, np.array([1.0, 2.0]))])
    assert client.get_stats().rpcs["PutSegments"].count == before  # nothing was sent


def test_offsets_that_do_not_add_up(
    stored: tuple[KVStoreClient, ClusterSegment], store_server: EmbeddedStore
) -> None:
    client, _ = stored
    seg = fresh()
    offsets = np.asarray(seg.offsets).copy()
    skewed = offsets.copy()
    skewed[2] += 1
    shifted = offsets + 1
    for bad, fragment in ((skewed, "offsets do not add up"), (shifted, "offsets must run from 0")):
        both_reject(client, store_server, [fresh(offsets=bad)], fragment)
    both_reject(
        client,
        store_server,
        [fresh(offsets=offsets[:-1])],
        "offsets shape=",
    )


def test_negative_or_huge_k(stored: tuple[KVStoreClient, ClusterSegment]) -> None:
    client, _ = stored
    q = [SearchQuery("s", 1, 1, np.ones((4, DIM), np.float32))]
    for k in (-1, 0):  # refused by the SDK
        with expect(InvalidArgumentError, INVALID, f"k={k}"):
            client.search_clusters(q, k=k)
    for k in (11, 1 << 40):  # refused by the store, which knows the cluster count
        with expect(InvalidArgumentError, INVALID, f"k={k}", "num_clusters"):
            client.search_clusters(q, k=k)
    with expect(FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION, "layer=0 kv_head=0"):
        client.search_clusters([SearchQuery("s", 0, 0, np.ones((4, DIM)))], k=1)


def test_layer_or_head_out_of_range(
    stored: tuple[KVStoreClient, ClusterSegment], store_server: EmbeddedStore
) -> None:
    client, _ = stored
    both_reject(
        client,
        store_server,
        [fresh(layer=2)],
        "layer=2 out of range [0, 2)",
    )
    with expect(InvalidArgumentError, INVALID, "kv_head=7 out of range [0, 2)"):
        client.fetch_clusters([FetchRequest("s", 1, 7, [0])])
    with expect(InvalidArgumentError, INVALID, "entries[1].layer=5"):
        client.search_clusters(
            [SearchQuery("s", 1, 1, np.ones((1, DIM))), SearchQuery("s", 5, 0, np.ones((1, DIM)))],
            1,
        )
    with expect(InvalidArgumentError, INVALID, "cluster_ids[1]=10 out of range [0, 10)"):
        client.fetch_clusters([FetchRequest("s", 1, 1, [3, 10])])
    with expect(InvalidArgumentError, INVALID, "cluster_ids[0]=-1"):
        client.fetch_clusters([FetchRequest("s", 1, 1, [-1])])
    with expect(InvalidArgumentError, INVALID, "cluster_ids[2]=3 is repeated"):
        client.fetch_clusters([FetchRequest("s", 1, 1, [3, 4, 3])])


def test_empty_payloads(
    stored: tuple[KVStoreClient, ClusterSegment], store_server: EmbeddedStore
) -> None:
    client, _ = stored
    with expect(InvalidArgumentError, INVALID, "no segments"):
        client.put_segments("s", [])
    with expect(InvalidArgumentError, INVALID, "no segments"):
        raw_put(store_server, client.namespace, [])
    empty = fresh(
        centroids=np.zeros((0, DIM), np.float32),
        sizes=np.zeros(0, np.int64),
        value_sums=np.zeros((0, DIM), np.float32),
        offsets=np.zeros(1, np.int64),
        keys=torch.zeros(0, DIM, dtype=torch.bfloat16),
        values=torch.zeros(0, DIM, dtype=torch.bfloat16),
    )
    both_reject(client, store_server, [empty], "centroids is empty")
    with expect(InvalidArgumentError, INVALID, "queries shape="):
        client.search_clusters([SearchQuery("s", 1, 1, np.zeros((0, DIM)))], k=1)
    bad_geometry = pb.Geometry(num_layers=1, num_kv_heads=1, head_dim=0, dtype=pb.DTYPE_FLOAT16)
    channel, stub = _raw_stub(store_server)  # raw stub: the SDK validates geometry itself
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.CreateSequence(
            pb.CreateSequenceRequest(
                namespace=client.namespace, sequence_id="g", geometry=bad_geometry
            )
        )
    assert info.value.code() == INVALID
    assert "geometry.head_dim=0" in info.value.details()
    with expect(InvalidArgumentError, INVALID, "requests is empty"):
        client.fetch_clusters([])


def _raw_stub(server: EmbeddedStore) -> tuple[grpc.Channel, pb_grpc.KVStoreStub]:
    channel = grpc.insecure_channel(server.target)
    return channel, pb_grpc.KVStoreStub(channel)


def _header(namespace: str, seg: ClusterSegment, sequence_id: str = "s") -> pb.PutSegmentsRequest:
    return pb.PutSegmentsRequest(
        header=pb.SegmentHeader(
            namespace=namespace,
            sequence_id=sequence_id,
            layer=seg.layer,
            kv_head=seg.kv_head,
            centroids=encode(seg.centroids),
            sizes=encode(np.asarray(seg.sizes)),
            value_sums=encode(seg.value_sums),
            offsets=encode(seg.offsets),
            keys=encode(seg.keys, with_data=False),
            values=encode(seg.values, with_data=False),
        )
    )


def test_client_stream_cut_off_mid_segment(
    stored: tuple[KVStoreClient, ClusterSegment], store_server: EmbeddedStore
) -> None:
    client, _ = stored
    seg = fresh()
    raw = seg.keys.view(torch.int16).numpy().tobytes()
    channel, stub = _raw_stub(store_server)
    with channel:
        half = [
            _header(client.namespace, seg),
            pb.PutSegmentsRequest(data=pb.SegmentData(data=raw[: len(raw) // 2])),
        ]
        with pytest.raises(grpc.RpcError) as info:  # stream half-closed mid-segment
            stub.PutSegments(iter(half))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "truncated: received" in info.value.details()

        def cancelled() -> Iterator[pb.PutSegmentsRequest]:
            yield from half
            future.cancel()  # client dies mid-segment: the server must not store anything

        future = stub.PutSegments.future(cancelled())
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
        with pytest.raises(grpc.RpcError) as info:
            stub.PutSegments(iter([pb.PutSegmentsRequest(data=pb.SegmentData(data=b"x"))]))
        assert "before any SegmentHeader" in info.value.details()
    assert client.get_sequence("s").num_segments == 1


def test_over_capacity_rejected_before_data() -> None:
    seg = make_segment(np.random.default_rng(0), 1, 1, 10, DIM, "bfloat16")
    with (
        EmbeddedStore(ServerSettings(port=0, capacity_bytes=6000)) as server,
        KVStoreClient(server.target, ClientOptions(namespace="cap")) as client,
    ):
        client.create_sequence("s", GEOMETRY)
        client.put_segments("s", [seg])
        used = client.get_stats().bytes_used
        with expect(
            CapacityError,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "capacity_bytes=6000",
            f"bytes_used={used}",
        ):
            client.put_segments(
                "s", [fresh(), make_segment(np.random.default_rng(1), 0, 0, 40, DIM, "bfloat16")]
            )
        assert client.get_stats().bytes_used == used
        assert_intact(client, seg)


def test_cross_tenant_access(
    stored: tuple[KVStoreClient, ClusterSegment], store_server: EmbeddedStore
) -> None:
    client, seg = stored
    with KVStoreClient(
        store_server.target, ClientOptions(namespace=client.namespace + "-other")
    ) as other:
        ns = f"namespace='{other.namespace}'"
        with expect(NotFoundError, grpc.StatusCode.NOT_FOUND, "sequence_id='s'", ns):
            other.fetch_clusters([FetchRequest("s", 1, 1, [0])])
        with expect(NotFoundError, grpc.StatusCode.NOT_FOUND, "sequence_id='s'", ns):
            other.delete_sequence("s")
        with expect(NotFoundError, grpc.StatusCode.NOT_FOUND, "sequence_id='s'"):
            other.put_segments("s", [seg])
        assert other.list_sequences() == []
