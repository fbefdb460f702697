"""Bit-exact K/V round trips, appended segments, batched multi-head fetch, sequence lifecycle."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from client import (
    AsyncKVStoreClient,
    ClientOptions,
    FetchRequest,
    KVStoreClient,
    NotFoundError,
    SequenceGeometry,
)
from kvstore_server.embedded import EmbeddedStore
from tests.store_fixtures import make_segment, reference_fetch


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_round_trip_is_bit_exact(store_client: KVStoreClient, dtype: str, as_numpy: bool) -> None:
    rng = np.random.default_rng(0)
    store_client.create_sequence("s", SequenceGeometry(2, 2, 64, dtype))
    seg = make_segment(rng, layer=1, kv_head=0, num_clusters=20, head_dim=64, dtype=dtype)
    if as_numpy and dtype != "bfloat16":
        seg.keys, seg.values = seg.keys.numpy(), seg.values.numpy()
    elif as_numpy:  # numpy carries bf16 as its uint16 bit pattern
        seg.keys, seg.values = (
            seg.keys.view(torch.int16).numpy().view(np.uint16),
            seg.values.view(torch.int16).numpy().view(np.uint16),
        )
    assert store_client.put_segments("s", [seg]) == [0]
    ids = [7, 0, 19, 3]
    (got,) = store_client.fetch_clusters([FetchRequest("s", 1, 0, np.array(ids))])
    ref_seg = make_segment(np.random.default_rng(0), 1, 0, 20, 64, dtype)
    want_k, want_v = reference_fetch([ref_seg], ids)
    assert got.keys.dtype == want_k.dtype and got.keys.shape == want_k.shape
    assert torch.equal(got.keys.view(torch.uint8), want_k.contiguous().view(torch.uint8))
    assert torch.equal(got.values.view(torch.uint8), want_v.contiguous().view(torch.uint8))
    sizes = np.asarray(ref_seg.sizes)[ids]
    assert got.offsets.tolist() == [0, *np.cumsum(sizes).tolist()]


def test_appended_segments_number_clusters_across_segments(store_client: KVStoreClient) -> None:
    rng = np.random.default_rng(1)
    store_client.create_sequence("s", SequenceGeometry(1, 1, 32, "bfloat16"))
    first = [make_segment(rng, 0, 0, 30, 32, "bfloat16")]
    later = [make_segment(rng, 0, 0, 8, 32, "bfloat16") for _ in range(3)]
    assert store_client.put_segments("s", first) == [0]
    assert store_client.put_segments("s", later[:1]) == [30]
    assert store_client.put_segments("s", later[1:]) == [38, 46]
    ids = [53, 0, 31, 29, 45, 38]
    (got,) = store_client.fetch_clusters([FetchRequest("s", 0, 0, torch.tensor(ids))])
    want_k, want_v = reference_fetch(first + later, ids)
    assert torch.equal(got.keys, want_k) and torch.equal(got.values, want_v)
    info = store_client.get_sequence("s")
    assert (info.num_clusters, info.num_segments) == (54, 4)
    assert info.num_tokens == sum(int(np.sum(s.sizes)) for s in first + later)


def test_many_clusters_across_layers_and_heads_in_one_fetch(store_client: KVStoreClient) -> None:
    rng = np.random.default_rng(2)
    layers, heads, dim = 3, 4, 16
    segs = {}
    for name in ("a", "b"):
        store_client.create_sequence(name, SequenceGeometry(layers, heads, dim, "float16"))
        batch = [
            make_segment(rng, la, h, 40, dim, "float16")
            for la in range(layers)
            for h in range(heads)
        ]
        store_client.put_segments(name, batch)
        segs.update({(name, s.layer, s.kv_head): s for s in batch})
    requests = []
    for name, la, h in segs:
        ids = rng.choice(40, size=int(rng.integers(0, 25)), replace=False)
        requests.append(FetchRequest(name, la, h, ids))
    results = store_client.fetch_clusters(requests)
    assert len(results) == len(requests)
    for req, got in zip(requests, results, strict=True):
        ids = list(np.asarray(req.cluster_ids))
        if not ids:
            assert got.keys.shape == (0, dim) and got.offsets.tolist() == [0]
            continue
        want_k, want_v = reference_fetch([segs[(req.sequence_id, req.layer, req.kv_head)]], ids)
        assert torch.equal(got.keys, want_k) and torch.equal(got.values, want_v)


def test_large_fetch_spans_many_chunks(store_client: KVStoreClient) -> None:
    rng = np.random.default_rng(3)
    store_client.create_sequence("big", SequenceGeometry(1, 2, 128, "float32"))
    segs = [make_segment(rng, 0, h, 600, 128, "float32", max_size=16) for h in range(2)]
    store_client.put_segments("big", segs)
    requests = [FetchRequest("big", 0, h, np.arange(600)[::-1].copy()) for h in range(2)]
    results = store_client.fetch_clusters(requests)  # ~2 x 2 x 4.6 MB: several 1 MiB chunks
    for h, got in enumerate(results):
        want_k, want_v = reference_fetch([segs[h]], list(range(600))[::-1])
        assert torch.equal(got.keys, want_k) and torch.equal(got.values, want_v)


def test_lifecycle_get_list_delete_and_stats(store_client: KVStoreClient) -> None:
    g = SequenceGeometry(2, 2, 8, "float32")
    info = store_client.create_sequence("x", g)
    assert store_client.create_sequence("x", g).incarnation_id == info.incarnation_id  # idempotent
    store_client.create_sequence("y", g)
    store_client.put_segments("x", [make_segment(np.random.default_rng(4), 0, 0, 5, 8, "float32")])
    assert [s.sequence_id for s in store_client.list_sequences()] == ["x", "y"]
    used = store_client.get_sequence("x").bytes_used
    assert used > 0
    assert store_client.delete_sequence("x") == used
    with pytest.raises(NotFoundError, match="sequence_id='x'"):
        store_client.get_sequence("x")
    stats = store_client.get_stats()
    assert stats.incarnation_id == info.incarnation_id
    assert stats.rpcs["CreateSequence"].count >= 3 and stats.rpcs["GetSequence"].errors >= 1


def test_async_client_round_trip(store_server: EmbeddedStore, namespace: str) -> None:
    seg = make_segment(np.random.default_rng(5), 0, 1, 12, 32, "bfloat16")

    async def run() -> None:
        async with AsyncKVStoreClient(
            store_server.target, ClientOptions(namespace=namespace)
        ) as client:
            await client.wait_ready()
            await client.create_sequence("s", SequenceGeometry(1, 2, 32, "bfloat16"))
            assert await client.put_segments("s", [seg]) == [0]
            (got,) = await client.fetch_clusters([FetchRequest("s", 0, 1, [11, 2])])
            want_k, want_v = reference_fetch([seg], [11, 2])
            assert torch.equal(got.keys, want_k) and torch.equal(got.values, want_v)

    asyncio.run(run())


def test_sharded_client_routes_by_consistent_hash(namespace: str) -> None:
    rng = np.random.default_rng(6)
    with (
        EmbeddedStore() as s1,
        EmbeddedStore() as s2,
        KVStoreClient([s1.target, s2.target], ClientOptions(namespace=namespace)) as client,
    ):
        names = [f"seq-{i}" for i in range(12)]
        segs = {}
        for name in names:
            client.create_sequence(name, SequenceGeometry(1, 1, 16, "float16"))
            segs[name] = make_segment(rng, 0, 0, 10, 16, "float16")
            client.put_segments(name, [segs[name]])
        per_store = [s.server.store.num_sequences for s in (s1, s2)]
        assert sum(per_store) == 12 and min(per_store) > 0
        results = client.fetch_clusters([FetchRequest(n, 0, 0, [9, 1]) for n in names])
        for name, got in zip(names, results, strict=True):
            assert torch.equal(got.keys, reference_fetch([segs[name]], [9, 1])[0])
        assert [i.sequence_id for i in client.list_sequences()] == sorted(names)
        assert client.get_stats().num_sequences == 12
