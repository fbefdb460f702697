"""Same-host shared-memory fetch against a real store on 127.0.0.1:0: bit-exact equality with
the streaming path, leases, generations, deleted sequences, bad descriptors, fallbacks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from client import (
    BadDescriptorError,
    ClientOptions,
    FetchRequest,
    InvalidArgumentError,
    KVStoreClient,
    NotFoundError,
    SequenceGeometry,
    SharedMemoryUnavailable,
    StaleDescriptorError,
)
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.store_fixtures import make_segment, reference_fetch, unique_ids
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


@pytest.fixture(scope="module")
def shm_server() -> Iterator[EmbeddedStore]:
    settings = ServerSettings(
        port=0, log_format="text", log_level="WARNING", shared_memory="require",
        shm_slab_bytes=4 << 20, max_lease_ttl_s=30.0,
    )  # fmt: skip
    with EmbeddedStore(settings) as server:
        yield server


@pytest.fixture
def clients(shm_server: EmbeddedStore, namespace: str) -> Iterator[tuple[KVStoreClient, ...]]:
    shm = KVStoreClient(
        shm_server.target, ClientOptions(namespace=namespace, shared_memory="require")
    )
    grpc_only = KVStoreClient(shm_server.target, ClientOptions(namespace=namespace))
    with shm, grpc_only:
        shm.wait_ready()
        yield shm, grpc_only


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_shared_memory_fetch_is_bit_exact_with_streaming(
    clients: tuple[KVStoreClient, KVStoreClient], dtype: str
) -> None:
    shm, grpc_only = clients
    rng = np.random.default_rng(7)
    shm.create_sequence("s", SequenceGeometry(3, 2, 48, dtype))
    segs = {
        (layer, h): [make_segment(rng, layer, h, c, 48, dtype, empty_every=5) for c in (40, 9)]
        for layer in range(3)
        for h in range(2)
    }
    for parts in segs.values():
        for seg in parts:  # appended one by one: the head's extent grows (and is moved)
            shm.put_segments("s", [seg])
    requests = [
        FetchRequest("s", layer, h, unique_ids(rng, 49, (int(rng.integers(0, 12)),)))
        for layer in range(3)
        for h in range(2)
    ]
    got = shm.fetch_clusters(requests)
    want = grpc_only.fetch_clusters(requests)
    assert shm.shared_arena() is not None
    for req, a, b in zip(requests, got, want, strict=True):
        assert a.keys.dtype == b.keys.dtype and a.keys.shape == b.keys.shape
        assert torch.equal(_bits(a.keys), _bits(b.keys))
        assert torch.equal(_bits(a.values), _bits(b.values))
        assert torch.equal(a.offsets, b.offsets)
        if len(req.cluster_ids):
            ref_k, ref_v = reference_fetch(segs[(req.layer, req.kv_head)], list(req.cluster_ids))
            assert torch.equal(_bits(a.keys), _bits(ref_k))
            assert torch.equal(_bits(a.values), _bits(ref_v))


def _one_sequence(client: KVStoreClient, sid: str = "s") -> list:
    rng = np.random.default_rng(3)
    client.create_sequence(sid, SequenceGeometry(1, 1, 16, "float16"))
    seg = make_segment(rng, 0, 0, 20, 16, "float16")
    client.put_segments(sid, [seg])
    return [seg]


def test_deleted_sequence_is_not_found_but_leased_rows_stay_readable(
    clients: tuple[KVStoreClient, KVStoreClient], shm_server: EmbeddedStore
) -> None:
    shm, _ = clients
    segs = _one_sequence(shm)
    arena = shm.shared_arena()
    assert arena is not None
    batch = shm.fetch_descriptors([FetchRequest("s", 0, 0, np.array([4, 2]))])
    shm.delete_sequence("s")
    with pytest.raises(NotFoundError, match="sequence_id='s'"):
        shm.fetch_descriptors([FetchRequest("s", 0, 0, np.array([1]))])
    keys, values = arena.gather_cpu(batch.entries[0])
    arena.verify(batch)  # the lease kept the freed extent intact
    ref_k, ref_v = reference_fetch(segs, [4, 2])
    assert torch.equal(_bits(keys), _bits(ref_k)) and torch.equal(_bits(values), _bits(ref_v))
    shm.done_with_lease(batch.lease_id)
    assert shm.release_leases() == 1
    with pytest.raises(StaleDescriptorError, match="generation"):
        arena.verify(batch)  # released: the extent was freed


def test_expired_lease_is_detected_by_generation(
    clients: tuple[KVStoreClient, KVStoreClient], shm_server: EmbeddedStore
) -> None:
    shm, _ = clients
    _one_sequence(shm)
    arena = shm.shared_arena()
    assert arena is not None
    batch = shm.fetch_descriptors([FetchRequest("s", 0, 0, np.array([0, 1]))], lease_ttl_s=0.05)
    assert batch.lease_ttl_s == pytest.approx(0.05)
    shm.delete_sequence("s")
    time.sleep(0.1)  # let the short lease run out (TTL expiry, not readiness)
    _one_sequence(shm, "t")  # the next allocation sweeps expired leases and reuses the memory
    with pytest.raises(StaleDescriptorError, match="generation"):
        arena.verify(batch)


def test_stale_shared_fetch_falls_back_to_identical_stream(
    clients: tuple[KVStoreClient, KVStoreClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.shm import ArenaReader

    shm, grpc_only = clients
    _one_sequence(shm)
    calls = []

    def stale(self: ArenaReader, batch: object) -> None:
        calls.append(batch)
        raise StaleDescriptorError("forced")

    auto = dataclasses.replace(shm.options, shared_memory="auto")
    monkeypatch.setattr(shm._aio, "options", auto)
    monkeypatch.setattr(ArenaReader, "verify", stale)
    req = [FetchRequest("s", 0, 0, np.array([5, 3, 19]))]
    got, want = shm.fetch_clusters(req)[0], grpc_only.fetch_clusters(req)[0]
    assert calls and torch.equal(_bits(got.keys), _bits(want.keys))
    assert torch.equal(_bits(got.values), _bits(want.values))


def test_bad_requests_get_invalid_argument_naming_the_field(
    clients: tuple[KVStoreClient, KVStoreClient],
) -> None:
    shm, _ = clients
    _one_sequence(shm)
    with pytest.raises(InvalidArgumentError, match=r"entries\[1\]\.cluster_ids\[0\]=20"):
        shm.fetch_descriptors(
            [FetchRequest("s", 0, 0, np.array([1])), FetchRequest("s", 0, 0, np.array([20]))]
        )
    with pytest.raises(InvalidArgumentError, match=r"entries\[0\]\.layer=3"):
        shm.fetch_descriptors([FetchRequest("s", 3, 0, np.array([1]))])
    with pytest.raises(InvalidArgumentError, match="lease_ttl_s=-1"):
        shm.fetch_descriptors([FetchRequest("s", 0, 0, np.array([1]))], lease_ttl_s=-1.0)
    got = shm.fetch_clusters([FetchRequest("s", 0, 0, np.array([0]))])[0]  # data intact
    assert got.keys.shape[0] == int(got.offsets[-1]) > 0


def test_bad_descriptors_are_rejected_before_reading(
    clients: tuple[KVStoreClient, KVStoreClient],
) -> None:
    shm, _ = clients
    _one_sequence(shm)
    arena = shm.shared_arena()
    assert arena is not None
    good = _raw_descriptors(shm, [2, 7])

    def bad(**changes: int) -> pb.FetchDescriptorsResponse:
        msg = pb.FetchDescriptorsResponse()
        msg.CopyFrom(good)
        for name, value in changes.items():
            setattr(msg.entries[0], name, value)
        return msg

    size = arena.slab(good.entries[0].slab).size
    with pytest.raises(BadDescriptorError, match=r"entries\[0\]\.keys_offset"):
        arena.decode(bad(keys_offset=(size // 32) * 32, extent_offset=64))
    with pytest.raises(BadDescriptorError, match="multiples of row_bytes"):
        arena.decode(bad(values_offset=good.entries[0].values_offset + 1))
    with pytest.raises(SharedMemoryUnavailable, match="cannot map"):
        arena.decode(bad(slab=999))
    with pytest.raises(BadDescriptorError, match="row_bytes=0"):
        arena.decode(bad(row_bytes=0))
    wrong = pb.FetchDescriptorsResponse()
    wrong.CopyFrom(good)
    wrong.arena_id = "0" * 32
    with pytest.raises(StaleDescriptorError, match="arena_id"):
        arena.decode(wrong)
    assert arena.decode(good).entries[0].num_rows > 0


def _raw_descriptors(client: KVStoreClient, ids: list[int]) -> pb.FetchDescriptorsResponse:
    aio = client._aio
    shard = aio._shards[0]
    req = pb.FetchDescriptorsRequest(
        namespace=client.namespace,
        entries=[pb.FetchEntry(sequence_id="s", cluster_ids=_ids(ids))],
        lease_ttl_s=1.0,
    )

    async def call() -> pb.FetchDescriptorsResponse:
        return await shard.stub.FetchDescriptors(req)

    return client._run(call())


def _ids(ids: list[int]) -> pb.Tensor:
    from wavekv_proto.codec import encode_numpy

    return encode_numpy(np.array(ids, np.int64), "int64")


def test_store_without_shared_memory_falls_back_to_streaming(namespace: str) -> None:
    settings = ServerSettings(port=0, log_format="text", log_level="WARNING", shared_memory="off")
    with EmbeddedStore(settings) as server:
        with KVStoreClient(
            server.target, ClientOptions(namespace=namespace, shared_memory="auto")
        ) as auto:
            segs = _one_sequence(auto)
            got = auto.fetch_clusters([FetchRequest("s", 0, 0, np.array([1, 0]))])[0]
            assert auto.shared_arena() is None
            ref_k, _ = reference_fetch(segs, [1, 0])
            assert torch.equal(_bits(got.keys), _bits(ref_k))
        with (
            KVStoreClient(
                server.target, ClientOptions(namespace=namespace, shared_memory="require")
            ) as req,
            pytest.raises(SharedMemoryUnavailable, match="private memory"),
        ):
            req.fetch_clusters([FetchRequest("s", 0, 0, np.array([1]))])
