"""Segmented spherical k-means, batched over rows (one row = one (sequence, kv_head)).

`cluster_keys` / `segmented_kmeans` run the Triton path (`kmeans_fast`: fused matmul + argmax
assignment, sort-based fp32 cluster sums) where the kernels run, else the torch reference
(`kmeans_torch`), picked by `use_triton`.
"""

from __future__ import annotations

import torch

from .kernels.availability import pick
from .kmeans_common import Clustering
from .kmeans_fast import cluster_keys_fast
from .kmeans_torch import cluster_keys_torch, segmented_kmeans_torch


def cluster_keys(
    keys: torch.Tensor,  # [R, N, D] any float dtype (the similarity matmuls run in this dtype)
    num_segments: int,
    clusters_per_segment: int,
    iterations: int,
    final_chunk: int = 16384,
    use_triton: bool | None = None,
) -> Clustering:
    """Segmented spherical k-means of each row plus its cluster-major layout. use_triton: None
    picks the Triton path where kernels are available, False forces the torch path."""
    if pick(use_triton, keys):
        return cluster_keys_fast(keys, num_segments, clusters_per_segment, iterations)
    return cluster_keys_torch(keys, num_segments, clusters_per_segment, iterations, final_chunk)


def segmented_kmeans(
    keys: torch.Tensor,  # [R, N, D] any float dtype (the similarity matmuls run in this dtype)
    num_segments: int,
    clusters_per_segment: int,
    iterations: int,
    final_chunk: int = 16384,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cluster each row's keys. Returns (labels [R, N] int64 in [0, C), centroids [R, C, D] fp32
    (unnormalised member mean with the row mean added back; the row mean for empty clusters),
    sizes [R, C] int64) with C = num_segments * clusters_per_segment."""
    if pick(use_triton, keys):
        result = cluster_keys(
            keys, num_segments, clusters_per_segment, iterations, final_chunk, use_triton=True
        )
        return result.labels, result.centroids, result.sizes
    return segmented_kmeans_torch(keys, num_segments, clusters_per_segment, iterations, final_chunk)
