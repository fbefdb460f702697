"""Tripartite attention math: cluster ranking, exact partial attention, estimation, LSE merge.

All functions work on rows R = B * Hkv with the G query heads of a GQA group in dim 1.
Outputs are fp32.
"""

from __future__ import annotations

import torch

from .kmeans_common import matmul_scores


def rank_clusters(
    q: torch.Tensor,  # [R, G, D]
    centroids: torch.Tensor,  # [R, C, D]
    sizes: torch.Tensor,  # [R, C] int64
    scale: float,
    centroid_scale: torch.Tensor | None = None,  # [R, C] fp32: int8 centroids' scales
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid logits z [R, G, C] fp32 (-inf for empty clusters) and the group score [R, C]:
    the sum over the G query heads of softmax_j(z). int8 centroids (centroid_scale given):
    z = (q . c_int8) * scale * centroid_scale."""
    if centroids.element_size() == 1:  # fp8 / int8 storage: the product in the query dtype
        centroids = centroids.to(q.dtype)
    z = matmul_scores(q.to(centroids.dtype), centroids) * scale
    if centroid_scale is not None:
        z = z * centroid_scale.unsqueeze(1)
    z = z.masked_fill((sizes == 0).unsqueeze(1), float("-inf"))
    return z, torch.softmax(z, dim=-1).nan_to_num(0.0).sum(dim=1)


def partial_attention(
    q: torch.Tensor,  # [R, G, D]
    keys: torch.Tensor,  # [R, T, D]
    values: torch.Tensor,  # [R, T, D]
    mask: torch.Tensor,  # [R, T] bool: valid tokens
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over the valid tokens: (o [R, G, D] fp32, lse [R, G] fp32).
    Rows without a valid token give o = 0, lse = -inf."""
    s = matmul_scores(q.to(keys.dtype), keys) * scale  # [R, G, T]
    s = s.masked_fill(~mask.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [R, G]
    p = torch.exp(s - lse.unsqueeze(-1).clamp(min=-1e30)).nan_to_num(0.0)
    o = torch.bmm(p.to(values.dtype), values).float()  # [R, G, D]
    return o, lse


def estimate(
    z: torch.Tensor,  # [R, G, K] centroid logits of the estimated clusters (scaled)
    sizes: torch.Tensor,  # [R, K] int64
    value_sums: torch.Tensor,  # [R, K, D] fp32
    keep: torch.Tensor,  # [R, K] bool: clusters in the estimation zone
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimation zone: every member of cluster j attends as if its key were c_j.
    o_E = sum_j e^{z_j} VS_j / sum_j s_j e^{z_j};  lse_E = log sum_j s_j e^{z_j}."""
    keep = keep & (sizes > 0)
    z = z.masked_fill(~keep.unsqueeze(1), float("-inf"))
    m = z.amax(dim=-1, keepdim=True).clamp(min=-1e30)  # [R, G, 1]
    w = torch.exp(z - m)  # [R, G, K]
    denom = (w * sizes.unsqueeze(1).float()).sum(dim=-1)  # [R, G]
    o = torch.bmm(w, value_sums) / denom.clamp(min=1e-30).unsqueeze(-1)
    lse = torch.where(denom > 0, m.squeeze(-1) + torch.log(denom), float("-inf"))
    return o, lse


def merge(
    o_x: torch.Tensor, lse_x: torch.Tensor, o_e: torch.Tensor, lse_e: torch.Tensor
) -> torch.Tensor:
    """Log-sum-exp merge of two partial attentions ([R, G, D] with [R, G]) -> [R, G, D]."""
    m = torch.maximum(lse_x, lse_e).clamp(min=-1e30)
    w_x = torch.exp(lse_x - m).unsqueeze(-1)
    w_e = torch.exp(lse_e - m).unsqueeze(-1)
    return (w_x * o_x + w_e * o_e) / (w_x + w_e).clamp(min=1e-30)
