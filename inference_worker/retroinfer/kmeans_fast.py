"""Triton path of the segmented spherical k-means (same steps as `kmeans`, the torch path).

Per iteration: fused matmul + argmax assignment (no score matrix), one batched sort of the
labels, fp32 sums of each cluster's members gathered in sorted order (no atomics) with the
normalisation fused. Keys stay in their dtype: the kernels subtract the row mean in fp32 on the
fly, so centred keys are never stored (the products see round(key - mean), as in the torch path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels.assign import assign_labels, sort_clusters
from .kernels.cluster_sums import cluster_sums
from .kmeans_common import Clustering, segment_bounds


def cluster_keys_fast(
    keys: torch.Tensor,  # [R, N, D] any float dtype (rows may be strided, token stride D)
    num_segments: int,
    clusters_per_segment: int,
    iterations: int,
) -> Clustering:
    """Segmented spherical k-means of each row and its cluster-major layout (Triton kernels)."""
    num_clusters = num_segments * clusters_per_segment
    mean = keys.mean(dim=1, dtype=torch.float32)  # [R, D]
    unit = _segment_units(keys, mean, num_segments, clusters_per_segment, iterations)
    labels = assign_labels(keys, unit.to(keys.dtype), shift=mean, use_triton=True)  # [R, N]
    order, offsets = sort_clusters(labels, num_clusters)
    sums, sorted_keys = cluster_sums(keys, order, offsets, shift=mean, gather=True, use_triton=True)
    assert sorted_keys is not None
    sizes = offsets.diff(dim=1)  # [R, C]
    centroids = sums / sizes.clamp(min=1).unsqueeze(-1).float() + mean.unsqueeze(1)
    return Clustering(labels.long(), centroids, sizes, order, offsets, sorted_keys)


def _segment_units(
    keys: torch.Tensor,  # [R, N, D]
    mean: torch.Tensor,  # [R, D] fp32
    num_segments: int,
    per_seg: int,
    iterations: int,
) -> torch.Tensor:
    """In-segment spherical iterations; unit centroids [R, n_seg * per_seg, D] fp32. The
    kernels read each segment in place (row r * n_seg + s = segment s of row r)."""
    rows, n, dim = keys.shape
    bounds = segment_bounds(n, num_segments, keys.device)  # [n_seg + 1]
    lengths = bounds[1:] - bounds[:-1]  # [n_seg]
    width = -(-n // num_segments)
    init_pos = (
        (torch.arange(per_seg, device=keys.device) + 0.5).unsqueeze(0)
        * lengths.unsqueeze(1)
        / per_seg
    ).long()  # [n_seg, C_s]
    tok = (bounds[:-1].unsqueeze(1) + init_pos.clamp(max=width - 1)).clamp(max=n - 1)
    init = keys[:, tok.reshape(-1)].float() - mean.unsqueeze(1)  # [R, n_seg * C_s, D]
    unit = F.normalize(init.reshape(rows * num_segments, per_seg, dim), dim=-1)  # [S, C_s, D]
    for _ in range(iterations - 1):
        labels = assign_labels(
            keys, unit.to(keys.dtype), shift=mean, use_triton=True, num_segments=num_segments
        )  # [S, W]; padding gets label C_s and sorts last
        order, offsets = sort_clusters(labels, per_seg)
        unit, _ = cluster_sums(
            keys, order, offsets, mean, unit, use_triton=True, num_segments=num_segments
        )
    return unit.reshape(rows, num_segments * per_seg, dim)
