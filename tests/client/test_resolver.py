"""Descriptor cache (client.resolver): same-host misses resolved locally, no RPC per call.

Every check runs a real store on 127.0.0.1:0 with shared memory and compares against the
gRPC streaming path of the same store on fresh random inputs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from client import (
    ClientOptions,
    DescriptorCache,
    FetchRequest,
    InvalidArgumentError,
    KVStoreClient,
    NotFoundError,
    ResolverConfig,
    SequenceGeometry,
    StaleDescriptorError,
    UnavailableError,
)
from inference_worker.engine.grpc_link import GrpcStoreLink
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.store_fixtures import make_segment, unique_ids

HEADS, D, C = 3, 32, 30
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _settings() -> ServerSettings:
    return ServerSettings(port=0, log_format="text", log_level="WARNING")


def _links(target: str, namespace: str, **client_kw: float) -> tuple[GrpcStoreLink, GrpcStoreLink]:
    local = GrpcStoreLink(
        KVStoreClient(target, ClientOptions(namespace=namespace, **client_kw)), "require"
    )
    stream = GrpcStoreLink(KVStoreClient(target, ClientOptions(namespace=namespace)), "off")
    return local, stream


def _fill(link: GrpcStoreLink, rng: np.random.Generator, ids: list[str], dtype: str) -> None:
    link.open(ids, SequenceGeometry(2, HEADS, D, dtype))
    for sid in ids:
        segs = [make_segment(rng, layer, h, C, D, dtype, 6) for layer in (0, 1) for h in range(3)]
        link.client.put_segments(sid, segs)


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert torch.equal(a.keys.cpu().view(torch.uint8), b.keys.cpu().view(torch.uint8))
    assert torch.equal(a.values.cpu().view(torch.uint8), b.values.cpu().view(torch.uint8))
    assert torch.equal(a.offsets.cpu(), b.offsets.cpu())


def _rpc_count(client: KVStoreClient, method: str) -> int:
    stat = client.get_stats().rpcs.get(method)
    return stat.count if stat is not None else 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_local_resolve_matches_streaming(dtype: str, device: str, namespace: str) -> None:
    rng = np.random.default_rng(5)
    ids = ["s0", "s1"]
    with EmbeddedStore(_settings()) as server:
        local, stream = _links(server.target, namespace)
        try:
            _fill(local, rng, ids, dtype)
            stream.open(ids, SequenceGeometry(2, HEADS, D, dtype))
            for step in range(4):
                layer = step % 2
                cluster_ids = torch.from_numpy(unique_ids(rng, C, (2, HEADS, 7)))  # [B, Hkv, n]
                cluster_ids[0, 1] = -1  # a row with nothing to fetch
                cluster_ids[1, 2, 4:] = -1  # padding
                if step == 0:
                    before = _rpc_count(local.client, "FetchDescriptors")
                a = local.fetch(layer, ids, cluster_ids.to(device), 50)
                _same(a, stream.fetch(layer, ids, cluster_ids, 50))
                assert a.keys.device.type == device
            assert local.counters.local_fetches == 4
            assert local.counters.fetched_bytes == stream.counters.fetched_bytes > 0
            # one whole-head description per layer, then nothing per call
            assert _rpc_count(local.client, "FetchDescriptors") - before == 2
        finally:
            local.close()
            stream.close()


def test_appended_clusters_are_described_again(namespace: str) -> None:
    rng = np.random.default_rng(6)
    ids = ["s0"]
    with EmbeddedStore(_settings()) as server:
        local, stream = _links(server.target, namespace)
        try:
            _fill(local, rng, ids, "bfloat16")
            stream.open(ids, SequenceGeometry(2, HEADS, D, "bfloat16"))
            first = torch.from_numpy(unique_ids(rng, C, (1, HEADS, 5)))
            _same(local.fetch(0, ids, first, 40), stream.fetch(0, ids, first, 40))
            segs = [make_segment(rng, 0, h, 400, D, "bfloat16", 6) for h in range(HEADS)]
            local.client.put_segments("s0", segs)  # grows every head into a new extent
            new = torch.from_numpy(C + unique_ids(rng, 400, (1, HEADS, 5)))
            _same(local.fetch(0, ids, new, 40), stream.fetch(0, ids, new, 40))  # falls back
            assert local.counters.local_fetches == 1
            _same(local.fetch(0, ids, new, 40), stream.fetch(0, ids, new, 40))  # re-described
            assert local.counters.local_fetches == 2
        finally:
            local.close()
            stream.close()


def test_bad_inputs_answer_like_streaming(namespace: str) -> None:
    rng = np.random.default_rng(7)
    ids = ["s0", "s1"]
    with EmbeddedStore(_settings()) as server:
        local, stream = _links(server.target, namespace)
        try:
            _fill(local, rng, ids, "float16")
            stream.open(ids, SequenceGeometry(2, HEADS, D, "float16"))
            good = torch.from_numpy(unique_ids(rng, C, (2, HEADS, 4)))
            expected = stream.fetch(1, ids, good, 30)
            bad = good.clone()
            bad[1, 2, 3] = 999
            with pytest.raises(InvalidArgumentError, match=r"cluster_ids\[3\]=999 out of range"):
                local.fetch(1, ids, bad, 30)
            with pytest.raises(InvalidArgumentError, match="layer"):
                local.fetch(5, ids, good, 30)
            with pytest.raises(NotFoundError, match="nope"):
                local.fetch(1, ["s0", "nope"], good, 30)
            with pytest.raises(ValueError, match=r"tokens for row \d+ > 3"):
                local.fetch(1, ids, good, 3)
            _same(local.fetch(1, ids, good, 30), expected)  # stored data intact
        finally:
            local.close()
            stream.close()


def test_whole_heads_rejects_ids(store_client: KVStoreClient) -> None:
    store_client.create_sequence("w", SequenceGeometry(1, 1, D, "float16"))
    segment = make_segment(np.random.default_rng(1), 0, 0, 8, D, "float16")
    store_client.put_segments("w", [segment])
    with pytest.raises(InvalidArgumentError, match=r"entries\[0\]\.cluster_ids has 2 ids"):
        store_client.fetch_descriptors(
            [FetchRequest("w", 0, 0, np.array([0, 1]))], whole_heads=True
        )
    batch = store_client.fetch_descriptors(
        [FetchRequest("w", 0, 0, np.empty(0, np.int64))], whole_heads=True
    )
    assert batch.whole_heads and batch.lens.shape == (8,)
    store_client.done_with_lease(batch.lease_id)
    (stored,) = store_client.fetch_clusters([FetchRequest("w", 0, 0, np.arange(8))])
    assert np.array_equal(np.asarray(stored.keys), np.asarray(segment.keys))  # data intact
    assert np.array_equal(np.asarray(stored.values), np.asarray(segment.values))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"renew_fraction=1\.5"):
        ResolverConfig(renew_fraction=1.5)


def _cache_setup(server: EmbeddedStore, namespace: str, clock):  # type: ignore[no-untyped-def]
    client = KVStoreClient(server.target, ClientOptions(namespace=namespace, lease_ttl_s=0.3))
    arena = client.shared_arena()
    assert arena is not None
    client.create_sequence("s0", SequenceGeometry(1, 1, D, "bfloat16"))
    client.put_segments("s0", [make_segment(np.random.default_rng(3), 0, 0, C, D, "bfloat16")])
    return client, DescriptorCache(client, arena, clock=clock)


def test_renewal_keeps_serving_and_drops_moved_heads(namespace: str) -> None:
    now = [0.0]
    with EmbeddedStore(_settings()) as server:
        client, cache = _cache_setup(server, namespace, lambda: now[0])
        stream = KVStoreClient(server.target, ClientOptions(namespace=namespace))
        try:
            ids = torch.arange(C).view(1, C)
            got = cache.fetch([("s0", 0, 0)], ids, 400)
            (ref,) = stream.fetch_clusters([FetchRequest("s0", 0, 0, np.arange(C))])
            assert torch.equal(got.keys[0, : ref.keys.shape[0]], ref.keys)
            now[0] = 1.0  # past renew_fraction of the 0.3 s lease
            cache.fetch([("s0", 0, 0)], ids, 400)
            assert (cache.renewals, cache.refreshes) == (1, 1)
            client.put_segments("s0", [make_segment(np.random.default_rng(4), 0, 0, 300, D,
                                                    "bfloat16")])  # fmt: skip
            now[0] = 2.0  # the renewal sees the new extent and re-describes the head
            got = cache.fetch([("s0", 0, 0)], ids, 400)
            assert (cache.renewals, cache.refreshes) == (2, 2)
            assert torch.equal(got.values[0, : ref.values.shape[0]], ref.values)
        finally:
            cache.close()
            client.close()
            stream.close()


@pytest.mark.parametrize("device", DEVICES)
def test_stale_generation_is_detected(device: str, namespace: str) -> None:
    with EmbeddedStore(_settings()) as server:
        client, cache = _cache_setup(server, namespace, lambda: 0.0)  # never renews
        other = KVStoreClient(server.target, ClientOptions(namespace=namespace))
        try:
            ids = torch.arange(C).view(1, C).to(device)
            cache.fetch([("s0", 0, 0)], ids, 400)
            time.sleep(0.4)  # the store's lease (0.3 s) lapses; the cache does not know
            other.delete_sequence("s0")
            other.create_sequence("s1", SequenceGeometry(1, 1, D, "bfloat16"))
            seg = make_segment(np.random.default_rng(3), 0, 0, C, D, "bfloat16")
            other.put_segments("s1", [seg])  # reuses the freed extent
            with pytest.raises(StaleDescriptorError, match="freed or reused"):
                cache.fetch([("s0", 0, 0)], ids, 400)
            assert not cache.table.keys()  # nothing cached is trusted any more
        finally:
            cache.close()
            client.close()
            other.close()


def test_renewal_after_delete_drops_the_cache(namespace: str) -> None:
    """Another client's delete shows at the next renewal (this link's own release at once)."""
    with EmbeddedStore(_settings()) as server:
        client, cache = _cache_setup(server, namespace, time.monotonic)
        local = GrpcStoreLink(client, "require")
        try:
            ids = torch.arange(C).view(1, 1, C)
            # time stands still until the renewal is wanted: the 0.3 s lease must not come due
            # by itself on a slow machine (its renewal would drop the cache early)
            start = time.monotonic()
            local._resolver.clock = lambda: start  # type: ignore[union-attr]
            local.fetch(0, ["s0"], ids, 400)
            KVStoreClient(server.target, ClientOptions(namespace=namespace)).delete_sequence("s0")
            local.fetch(0, ["s0"], ids, 400)  # leased memory, still intact: served until renewal
            local._resolver.clock = lambda: start + 100  # type: ignore[union-attr]
            with pytest.raises(NotFoundError, match="s0"):
                local.fetch(0, ["s0"], ids, 400)
            assert local.counters.local_fetches == 2
        finally:
            cache.close()
            local.close()


def test_store_gone_stops_local_serving(namespace: str) -> None:
    """A dropped connection (store killed or restarted) forces a renewal before anything is
    served from the mapping: the call then fails like streaming would (UNAVAILABLE)."""
    server = EmbeddedStore(_settings())
    server.start()
    client = KVStoreClient(server.target, ClientOptions(namespace=namespace, timeout_s=5.0))
    link = GrpcStoreLink(client, "require")
    try:
        _fill(link, np.random.default_rng(8), ["s0"], "float16")
        ids = torch.from_numpy(unique_ids(np.random.default_rng(9), C, (1, HEADS, 4)))
        link.fetch(0, ["s0"], ids, 30)
        assert link.counters.local_fetches == 1
        cache = link._resolver
        assert cache is not None
        # the watcher counts a drop only after it has seen READY (a gRPC thread reports it; on
        # a loaded machine it can lag behind the first calls)
        deadline = time.monotonic() + 30
        while not cache._ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache._ready
        server.stop()
        deadline = time.monotonic() + 30
        while cache._drops == 0 and time.monotonic() < deadline:  # the watcher's thread
            time.sleep(0.01)
        assert cache._drops == 1
        with pytest.raises(UnavailableError):
            link.fetch(0, ["s0"], ids, 30)
        assert link.counters.local_fetches == 1
    finally:
        link.close()
