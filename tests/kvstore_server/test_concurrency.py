"""16 concurrent clients mixing puts, searches and fetches against one real server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from client import ClientOptions, FetchRequest, KVStoreClient, SearchQuery, SequenceGeometry
from kvstore_server.embedded import EmbeddedStore
from tests.store_fixtures import make_segment, reference_fetch

CLIENTS = 16
DIM = 32


def _worker(target: str, namespace: str, worker: int) -> int:
    rng = np.random.default_rng(100 + worker)
    name = f"w{worker}"
    with KVStoreClient(target, ClientOptions(namespace=namespace)) as client:
        client.create_sequence(name, SequenceGeometry(2, 2, DIM, "bfloat16"))
        segs: dict[tuple[int, int], list] = {}
        checks = 0
        for step in range(6):
            layer, head = step % 2, (step // 2) % 2
            seg = make_segment(rng, layer, head, 24, DIM, "bfloat16")
            first = client.put_segments(name, [seg])[0]
            assert first == 24 * len(segs.get((layer, head), []))
            segs.setdefault((layer, head), []).append(seg)
            requests = [
                FetchRequest(name, la, h, rng.choice(24 * len(s), 10, replace=False))
                for (la, h), s in segs.items()
            ]
            for req, got in zip(requests, client.fetch_clusters(requests), strict=True):
                want_k, want_v = reference_fetch(
                    segs[(req.layer, req.kv_head)], list(req.cluster_ids)
                )
                assert torch.equal(got.keys, want_k) and torch.equal(got.values, want_v)
                checks += 1
            res = client.search_clusters(
                [SearchQuery(name, layer, head, rng.standard_normal((4, DIM)))], k=5
            )
            assert res[0].cluster_ids.shape == (5,)
        assert client.get_sequence(name).num_segments == 6
        return checks


def test_sixteen_concurrent_clients(store_server: EmbeddedStore, namespace: str) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_worker, store_server.target, namespace, w) for w in range(CLIENTS)]
        checks = [f.result() for f in futures]
    assert sum(checks) == CLIENTS * sum(min(s + 1, 4) for s in range(6))
    with KVStoreClient(store_server.target, ClientOptions(namespace=namespace)) as client:
        assert len(client.list_sequences()) == CLIENTS
        stats = client.get_stats()
        assert stats.rpcs["PutSegments"].count >= CLIENTS * 6
        assert stats.rpcs["FetchClusters"].errors == 0
