"""Top-k cluster ranking over one (layer, kv_head)'s centroids.

gqa_softmax (retroinfer.md, "Rank"): score_j = sum over the G query heads of
softmax_j(q_h . c_j / sqrt(D)); empty clusters score -inf. Softmax needs every logit, so this
mode is one BLAS matmul [G, D] x [D, C] plus a partial sort.
inner_product: score_j = sum_h q_h . c_j = (sum_h q_h) . c_j, an exact faiss inner-product
top-k over the centroids (faiss is imported lazily; without faiss an exact numpy top-k over
the same scores is used, so the store runs on hosts without faiss).
"""

from __future__ import annotations

import math

import numpy as np

SCORINGS = ("gqa_softmax", "inner_product")


def rank_clusters(
    centroids: np.ndarray,  # [C, D] float32
    sizes: np.ndarray,  # [C] int64
    queries: np.ndarray,  # [G, D] float32
    k: int,
    scoring: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (cluster ids [k] int64, scores [k] float32), best first; 1 <= k <= C."""
    assert 1 <= k <= centroids.shape[0], (k, centroids.shape)
    if scoring == "gqa_softmax":
        scores = gqa_softmax_scores(centroids, sizes, queries)  # [C]
        return top_k(scores, k)
    assert scoring == "inner_product", scoring
    return _faiss_inner_product(centroids, sizes, queries, k)


def gqa_softmax_scores(
    centroids: np.ndarray,  # [C, D] float32
    sizes: np.ndarray,  # [C] int64
    queries: np.ndarray,  # [G, D] float32
) -> np.ndarray:  # [C] float32
    logits = np.ascontiguousarray((centroids @ queries.T).T)  # [G, C]; row-wise ops are fast
    logits *= np.float32(1.0 / math.sqrt(centroids.shape[1]))
    empty = sizes == 0
    if empty.any():
        logits[:, empty] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    scores = logits.sum(axis=0)  # [C]
    if empty.any():
        scores[empty] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scores [C] -> (ids [k] int64, scores [k] float32), descending, ties by lower id."""
    if k < scores.shape[0]:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(scores.shape[0])
    order = np.lexsort((part, -scores[part]))
    ids = part[order].astype(np.int64)
    return ids, scores[ids].astype(np.float32)


def _faiss_inner_product(
    centroids: np.ndarray,  # [C, D] float32
    sizes: np.ndarray,  # [C] int64
    queries: np.ndarray,  # [G, D] float32
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    q = queries.sum(axis=0, keepdims=True, dtype=np.float32)  # [1, D]
    empty = sizes == 0
    num_empty = int(empty.sum())
    kk = min(centroids.shape[0], k + num_empty)
    try:
        import faiss
    except ImportError:  # exact numpy fallback: same scores, ties by lower id
        ids, dist = top_k((centroids @ q[0]).astype(np.float32), kk)  # [kk]
    else:
        found = faiss.knn(q, np.ascontiguousarray(centroids), kk, metric=faiss.METRIC_INNER_PRODUCT)
        ids, dist = found[1][0].astype(np.int64), found[0][0].astype(np.float32)  # [kk]
    if num_empty:
        keep = ~empty[ids]
        ids, dist = ids[keep], dist[keep]
        if ids.shape[0] < k:
            pad = np.flatnonzero(empty)[: k - ids.shape[0]]
            ids = np.concatenate([ids, pad])
            dist = np.concatenate([dist, np.full(pad.shape[0], -np.inf, np.float32)])
    return ids[:k], dist[:k]
