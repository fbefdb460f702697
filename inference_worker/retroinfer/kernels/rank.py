"""Centroid scoring with the GQA group sum of softmax probabilities, and top-k zone selection.

Two Triton kernels: `logits_kernel` scans the centroids once (grid rows x cluster blocks) and
writes the logits z plus per-block softmax partials; `select_kernel` (one program per row,
scores held in registers) forms score_j = sum_g softmax_j(z_g), finds the n_ret-th and
(n_ret + n_est)-th largest scores by a bisection on their bit patterns (both thresholds per
step), and writes the retrieval ids (index order, then sorted by score) and the estimation-zone
mask. No [R, C] top-k sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import rank_clusters
from .availability import pick
from .sizes import next_pow2

MAX_SELECT_BLOCK = 32768  # clusters per row the register-resident selection handles
SEARCH_STEPS = 31  # bisection steps that always suffice over the non-negative float32 patterns
LOGITS_BLOCK_C = 128  # clusters per centroid-scan program
LOGITS_WARPS = 4


@dataclass(slots=True)
class RankSelection:
    """Result of ranking one step's rows."""

    z: torch.Tensor  # [R, G, C] fp32 centroid logits (scaled; -inf for empty clusters)
    retrieved: torch.Tensor  # [R, n_ret] int64 cluster ids, best first
    estimated: torch.Tensor  # [R, C] bool: the next n_est clusters (estimation zone)
    estimated_ids: torch.Tensor  # [R, n_est] int64: the same clusters as a list
    # rank_select(..., sort=False) on the Triton path: `retrieved` is in index order and these
    # are its scores [R, n_ret] fp32 (order by score descending, ties by position, to rank it)
    retrieved_score: torch.Tensor | None = None


def rank_select(
    q: torch.Tensor,  # [R, G, D]
    centroids: torch.Tensor,  # [R, C, D]
    sizes: torch.Tensor,  # [R, C] int64 (0 = empty cluster)
    scale: float,
    n_ret: int,
    n_est: int,
    use_triton: bool | None = None,
    sort: bool = True,
    centroid_scale: torch.Tensor | None = None,  # [R, C] fp32: int8 centroids' scales
) -> RankSelection:
    """Top n_ret clusters by group score (best first) and the mask of the next n_est.
    sort=False may leave `retrieved` unsorted with `retrieved_score` set (see RankSelection).
    centroid_scale: the centroids are int8, centroid j of row r is centroids[r, j] * scale[r, j]
    (see index.quantize_centroids)."""
    c = centroids.shape[1]
    if n_ret < 1 or n_ret + n_est > c:
        raise ValueError(f"need 1 <= n_ret and n_ret + n_est <= C, got {n_ret}, {n_est}, C={c}")
    if (centroid_scale is not None) != (centroids.dtype == torch.int8):
        raise ValueError(
            f"centroid_scale is needed exactly for int8 centroids, got centroids "
            f"{centroids.dtype} with centroid_scale {'set' if centroid_scale is not None else None}"
        )
    fits = next_pow2(c) <= MAX_SELECT_BLOCK and _is_pow2(q.shape[-1])
    if not (fits and pick(use_triton, q)):
        return rank_select_reference(q, centroids, sizes, scale, n_ret, n_est, centroid_scale)
    return _rank_select_triton(q, centroids, sizes, scale, n_ret, n_est, sort, centroid_scale)


def rank_select_reference(
    q: torch.Tensor,
    centroids: torch.Tensor,
    sizes: torch.Tensor,
    scale: float,
    n_ret: int,
    n_est: int,
    centroid_scale: torch.Tensor | None = None,
) -> RankSelection:
    """torch reference: softmax group scores, one sorted top-k."""
    z, score = rank_clusters(q, centroids, sizes, scale, centroid_scale)  # [R, G, C], [R, C]
    top = torch.topk(score, n_ret + n_est, dim=-1, sorted=True).indices  # [R, k]
    estimated = torch.zeros_like(score, dtype=torch.bool)
    estimated.scatter_(1, top[:, n_ret:], True)
    return RankSelection(
        z=z, retrieved=top[:, :n_ret], estimated=estimated, estimated_ids=top[:, n_ret:]
    )


def _rank_select_triton(
    q: torch.Tensor,
    centroids: torch.Tensor,
    sizes: torch.Tensor,
    scale: float,
    n_ret: int,
    n_est: int,
    sort: bool = True,
    centroid_scale: torch.Tensor | None = None,
) -> RankSelection:
    from ._rank_triton import logits_kernel, select_kernel

    r, g, d = q.shape
    c = centroids.shape[1]
    block_c = LOGITS_BLOCK_C
    nb = (c + block_c - 1) // block_c
    dev = q.device
    q = q.to(scan_dtype(q, centroids)).contiguous()
    scaled = centroid_scale is not None
    cs = centroid_scale.contiguous() if centroid_scale is not None else sizes
    z = torch.empty(r, g, c, dtype=torch.float32, device=dev)
    part_m = torch.empty(r, g, nb, dtype=torch.float32, device=dev)
    part_l = torch.empty(r, g, nb, dtype=torch.float32, device=dev)
    logits_kernel[(r, nb)](
        q, centroids.contiguous(), sizes.contiguous(), cs, z, part_m, part_l, c, nb, scale,
        G=g, GP=16, D=d, BLOCK_C=block_c, SCALED=scaled, num_warps=LOGITS_WARPS,
    )  # fmt: skip
    ret = torch.empty(r, n_ret, dtype=torch.int64, device=dev)
    ret_score = torch.empty(r, n_ret, dtype=torch.float32, device=dev)
    estimated = torch.empty(r, c, dtype=torch.int8, device=dev)
    est_ids = torch.empty(r, n_est, dtype=torch.int64, device=dev)
    block = next_pow2(c)
    select_kernel[(r,)](
        z, part_m, part_l, ret, ret_score, estimated, est_ids, c, nb, n_ret, n_ret + n_est,
        G=g, BLOCK=block, BLOCK_NB=next_pow2(nb), STEPS=SEARCH_STEPS,
        num_warps=8 if block <= 8192 else 16,
    )  # fmt: skip
    if not sort:
        return RankSelection(z, ret, estimated.view(torch.bool), est_ids, ret_score)
    return RankSelection(z, sort_retrieved(ret, ret_score), estimated.view(torch.bool), est_ids)


def scan_dtype(q: torch.Tensor, centroids: torch.Tensor) -> torch.dtype:
    """The dtype of the scan's product: the centroids' (model dtype), bf16 for fp8 centroids
    (widened in the kernel), the query's for int8 centroids (exact in any float dtype)."""
    if centroids.dtype == torch.int8:
        return q.dtype
    return torch.bfloat16 if centroids.element_size() == 1 else centroids.dtype


def sort_retrieved(ret: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """ret [R, n] ordered by score [R, n] descending, ties in position order."""
    return ret.gather(1, torch.sort(score, dim=1, descending=True, stable=True).indices)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0
