"""SearchClusters against a brute-force numpy reference (GQA softmax ranking and inner product)."""

from __future__ import annotations

import numpy as np
import pytest

from client import KVStoreClient, SearchQuery, SequenceGeometry
from kvstore_server.search import rank_clusters
from tests.store_fixtures import make_segment, reference_gqa_scores

DIM = 64


def _centroids(segs: list) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([np.asarray(s.centroids) for s in segs]),
        np.concatenate([np.asarray(s.sizes) for s in segs]),
    )


def _check(ids: np.ndarray, scores: np.ndarray, ref: np.ndarray, k: int) -> None:
    order = np.lexsort((np.arange(ref.shape[0]), -ref))[:k]
    np.testing.assert_allclose(scores, ref[order], rtol=2e-5, atol=1e-6)
    assert ids.tolist() == order.tolist()


@pytest.mark.parametrize("scoring", ["gqa_softmax", "inner_product"])
def test_search_matches_brute_force_over_many_entries(
    store_client: KVStoreClient, scoring: str
) -> None:
    rng = np.random.default_rng(11)
    layers, heads, group = 2, 3, 4
    segs: dict[tuple[str, int, int], list] = {}
    for name in ("a", "b"):
        store_client.create_sequence(name, SequenceGeometry(layers, heads, DIM, "float16"))
        for la in range(layers):
            for h in range(heads):  # two appended segments per head, some empty clusters
                parts = [
                    make_segment(rng, la, h, 150, DIM, "float16", empty_every=17),
                    make_segment(rng, la, h, 64, DIM, "float16"),
                ]
                store_client.put_segments(name, parts[:1])
                store_client.put_segments(name, parts[1:])
                segs[(name, la, h)] = parts
    queries = [
        SearchQuery(n, la, h, rng.standard_normal((group, DIM), dtype=np.float32) * 3)
        for (n, la, h) in segs
    ]
    k = 12
    results = store_client.search_clusters(queries, k=k, scoring=scoring)
    assert len(results) == len(queries)
    for q, res in zip(queries, results, strict=True):
        centroids, sizes = _centroids(segs[(q.sequence_id, q.layer, q.kv_head)])
        if scoring == "gqa_softmax":
            ref = reference_gqa_scores(centroids, sizes, q.queries)
        else:
            ref = q.queries.astype(np.float64).sum(0) @ centroids.astype(np.float64).T
            ref[sizes == 0] = -np.inf
        _check(res.cluster_ids.numpy(), res.scores.numpy(), ref, k)


def test_gqa_ranking_differs_from_summed_logits() -> None:
    """Summing probabilities (not logits): one head cannot outvote the group with a huge logit."""
    centroids = np.array([[10.0, 0.0], [0.0, 1.0], [0.0, 1.2]], np.float32) * 4  # [C=3, D=2]
    sizes = np.ones(3, np.int64)
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)  # [G=3, D]
    ids, _ = rank_clusters(centroids, sizes, queries, 1, "gqa_softmax")
    ids_ip, _ = rank_clusters(centroids, sizes, queries, 1, "inner_product")
    ref = reference_gqa_scores(centroids, sizes, queries)
    assert ids.tolist() == [int(np.argmax(ref))] == [2]  # two heads agree on cluster 2
    assert ids_ip.tolist() == [0]  # one huge logit dominates the summed inner product


def test_rank_fast_path_matches_reference_on_fresh_inputs() -> None:
    rng = np.random.default_rng(12)
    for trial in range(20):
        c, g = int(rng.integers(1, 400)), int(rng.integers(1, 9))
        centroids = rng.standard_normal((c, DIM), dtype=np.float32)
        sizes = rng.integers(0, 20, c)
        sizes[0] = 1
        queries = rng.standard_normal((g, DIM), dtype=np.float32) * 2
        k = int(rng.integers(1, c + 1))
        ids, scores = rank_clusters(centroids, sizes, queries, k, "gqa_softmax")
        ref = reference_gqa_scores(centroids, sizes, queries)
        finite = np.isfinite(ref[ids])
        _check(ids[finite], scores[finite], ref, int(finite.sum()))
        assert trial >= 0
