"""The torch path of the segmented spherical k-means (the reference): materialised similarity
chunks, scatter_add updates. Segments are reshaped into the batch dimension, so one call clusters
every head and segment of a layer; an uneven last segment is padded and masked."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kmeans_common import _SIMILARITY_BUDGET, Clustering, assignment_scores, segment_bounds


def cluster_keys_torch(
    keys: torch.Tensor,  # [R, N, D] any float dtype
    num_segments: int,
    clusters_per_segment: int,
    iterations: int,
    final_chunk: int,
) -> Clustering:
    """The clustering plus its cluster-major layout."""
    labels, centroids, sizes = segmented_kmeans_torch(
        keys, num_segments, clusters_per_segment, iterations, final_chunk
    )
    rows, n, dim = keys.shape
    order = torch.sort(labels, dim=1, stable=True).indices  # [R, N] cluster-major permutation
    offsets = torch.zeros(rows, sizes.shape[1] + 1, dtype=torch.int64, device=keys.device)
    offsets[:, 1:] = sizes.cumsum(dim=1)
    sorted_keys = keys.gather(1, order.unsqueeze(-1).expand(rows, n, dim))
    return Clustering(labels, centroids, sizes, order, offsets, sorted_keys)


def segmented_kmeans_torch(
    keys: torch.Tensor,  # [R, N, D]
    num_segments: int,
    clusters_per_segment: int,
    iterations: int,
    final_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch path: materialised similarity chunks, scatter_add updates."""
    rows, n, dim = keys.shape
    mean = keys.float().mean(dim=1, keepdim=True)  # [R, 1, D]
    centred = keys.float() - mean  # [R, N, D] fp32
    unit = _segment_centroids(centred, keys.dtype, num_segments, clusters_per_segment, iterations)
    labels = _assign(centred.to(keys.dtype), unit.to(keys.dtype), final_chunk)  # [R, N]
    num_clusters = num_segments * clusters_per_segment
    sums = torch.zeros(rows, num_clusters, dim, dtype=torch.float32, device=keys.device)
    sums.scatter_add_(1, labels.unsqueeze(-1).expand(rows, n, dim), centred)
    sizes = torch.zeros(rows, num_clusters, dtype=torch.int64, device=keys.device)
    sizes.scatter_add_(1, labels, torch.ones_like(labels))
    centroids = sums / sizes.clamp(min=1).unsqueeze(-1).float() + mean  # [R, C, D]
    return labels, centroids, sizes


def _segment_centroids(
    centred: torch.Tensor,  # [R, N, D] fp32
    mm_dtype: torch.dtype,
    num_segments: int,
    per_seg: int,
    iterations: int,
) -> torch.Tensor:
    """In-segment spherical iterations; returns unit centroids [R, n_seg * per_seg, D] fp32."""
    rows, n, dim = centred.shape
    bounds = segment_bounds(n, num_segments, centred.device)  # [n_seg + 1]
    lengths = bounds[1:] - bounds[:-1]  # [n_seg]
    width = int(lengths.max())
    t = torch.arange(width, device=centred.device)
    valid = t.unsqueeze(0) < lengths.unsqueeze(1)  # [n_seg, T]
    idx = (bounds[:-1].unsqueeze(1) + t).clamp(max=n - 1)  # [n_seg, T]
    seg32 = centred[:, idx.reshape(-1)].reshape(rows * num_segments, width, dim)  # [S, T, D]
    init_pos = (
        (torch.arange(per_seg, device=centred.device) + 0.5).unsqueeze(0)
        * lengths.unsqueeze(1)
        / per_seg
    ).long()  # [n_seg, C_s]
    init_pos = init_pos.clamp(max=width - 1)
    init = seg32.reshape(rows, num_segments, width, dim)
    init = init.gather(2, init_pos.view(1, num_segments, per_seg, 1).expand(rows, -1, -1, dim))
    unit = F.normalize(init.reshape(rows * num_segments, per_seg, dim), dim=-1)  # [S, C_s, D]
    seg_valid = valid.repeat(rows, 1)  # [S, T]
    seg_mm = seg32.to(mm_dtype)
    chunk = max(_SIMILARITY_BUDGET // max(width * per_seg, 1), 1)
    for _ in range(iterations - 1):
        unit = torch.cat(
            [
                _spherical_step(
                    seg32[s : s + chunk],
                    seg_mm[s : s + chunk],
                    seg_valid[s : s + chunk],
                    unit[s : s + chunk],
                )
                for s in range(0, unit.shape[0], chunk)
            ]
        )
    return unit.reshape(rows, num_segments * per_seg, dim)


def _spherical_step(
    seg32: torch.Tensor,  # [S, T, D] fp32
    seg_mm: torch.Tensor,  # [S, T, D] matmul dtype
    valid: torch.Tensor,  # [S, T] bool
    unit: torch.Tensor,  # [S, C_s, D] fp32 unit centroids
) -> torch.Tensor:
    """One assignment + normalised-mean update; empty clusters keep their centroid."""
    s, t, dim = seg32.shape
    per_seg = unit.shape[1]
    labels = assignment_scores(seg_mm, unit.to(seg_mm.dtype)).argmax(dim=-1)  # [S, T]
    labels = torch.where(valid, labels, per_seg)  # padding goes to a dropped extra bucket
    sums = torch.zeros(s, per_seg + 1, dim, dtype=torch.float32, device=seg32.device)
    sums.scatter_add_(1, labels.unsqueeze(-1).expand(s, t, dim), seg32)
    counts = torch.zeros(s, per_seg + 1, dtype=torch.int64, device=seg32.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    fresh = F.normalize(sums[:, :per_seg], dim=-1)
    return torch.where((counts[:, :per_seg] > 0).unsqueeze(-1), fresh, unit)


def _assign(
    x: torch.Tensor,  # [R, N, D]
    unit: torch.Tensor,  # [R, C, D]
    chunk: int,
) -> torch.Tensor:
    """Final global assignment of every token to its best centroid: labels [R, N] int64."""
    rows, n, _ = x.shape
    per_chunk = max(min(chunk, _SIMILARITY_BUDGET // max(rows * unit.shape[1], 1)), 1)
    parts = [
        assignment_scores(x[:, s : s + per_chunk], unit).argmax(dim=-1)
        for s in range(0, n, per_chunk)
    ]
    return torch.cat(parts, dim=1)
