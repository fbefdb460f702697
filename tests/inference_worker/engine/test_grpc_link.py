"""The engine's GrpcStoreLink: shared-memory mode packs exactly what the streaming mode packs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client import ClientOptions, KVStoreClient, SequenceGeometry, SharedMemoryUnavailable
from inference_worker.engine.grpc_link import GrpcStoreLink
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.interpret import run_check
from tests.store_fixtures import make_segment, unique_ids


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_link_shared_memory_matches_streaming(dtype: str, namespace: str) -> None:
    rng = np.random.default_rng(11)
    settings = ServerSettings(port=0, log_format="text", log_level="WARNING")
    geometry = SequenceGeometry(2, 3, 32, dtype)
    ids = ["a", "b"]
    with EmbeddedStore(settings) as server:
        shm = GrpcStoreLink(
            KVStoreClient(server.target, ClientOptions(namespace=namespace)), "require"
        )
        stream = GrpcStoreLink(
            KVStoreClient(server.target, ClientOptions(namespace=namespace)), "off"
        )
        try:
            assert shm.uses_shared_memory and not stream.uses_shared_memory
            shm.open(ids, geometry)
            stream.open(ids, geometry)
            for sid in ids:
                shm.client.put_segments(
                    sid,
                    [make_segment(rng, 1, h, 30, 32, dtype, max_size=6) for h in range(3)],
                )
            cluster_ids = torch.from_numpy(unique_ids(rng, 30, (2, 3, 5)))  # [B, Hkv, n]
            cluster_ids[0, 1] = -1  # a row with nothing to fetch
            cluster_ids[1, 2, 3:] = -1  # padding
            a = shm.fetch(1, ids, cluster_ids, 40)
            b = stream.fetch(1, ids, cluster_ids, 40)
            assert a.keys.shape == b.keys.shape == (2, 3, 40, 32)
            assert torch.equal(a.keys.view(torch.uint8), b.keys.view(torch.uint8))
            assert torch.equal(a.values.view(torch.uint8), b.values.view(torch.uint8))
            assert torch.equal(a.offsets, b.offsets)
            assert shm.counters.fetched_bytes == stream.counters.fetched_bytes > 0
        finally:
            shm.close()
            stream.close()


def test_link_require_fails_without_shared_memory(namespace: str) -> None:
    settings = ServerSettings(port=0, log_format="text", log_level="WARNING", shared_memory="off")
    with EmbeddedStore(settings) as server:
        client = KVStoreClient(server.target, ClientOptions(namespace=namespace))
        try:
            with pytest.raises(SharedMemoryUnavailable):
                GrpcStoreLink(client, "require")
            assert not GrpcStoreLink(client, "auto").uses_shared_memory
            with pytest.raises(ValueError, match="same_host='maybe'"):
                GrpcStoreLink(client, "maybe")
        finally:
            client.close()


def test_direct_path_reads_the_store_arena_interpreted() -> None:
    """The Triton step admits misses straight from a real store's arena (GrpcStoreLink's
    cluster rows), equal to the reference fetching the same clusters (CPU interpreter)."""
    pytest.importorskip("triton")
    run_check(["-m", "tests.inference_worker.engine.link_cases"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_direct_path_reads_the_store_arena_gpu(dtype: torch.dtype) -> None:
    from tests.inference_worker.engine.link_cases import check_store_rows

    check_store_rows("cuda", dtype, seed=3, steps=10)
