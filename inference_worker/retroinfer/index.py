"""Wave index: cluster-major segments (to upload) and the device-resident cluster metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kmeans import segmented_kmeans


@dataclass(slots=True)
class IndexSegment:
    """One clustered segment of a layer for B sequences x Hkv KV heads, cluster-major.

    Cluster ids inside the segment are local (0..C-1); `first_cluster` is the global id of local
    cluster 0 within each (sequence, kv_head) (segments of a (sequence, layer, kv_head) are
    numbered consecutively, matching the store's put_segments numbering).
    """

    layer: int
    first_cluster: int
    centroids: torch.Tensor  # [B, Hkv, C, D] fp32 (unnormalised, mean added back)
    sizes: torch.Tensor  # [B, Hkv, C] int64
    value_sums: torch.Tensor  # [B, Hkv, C, D] fp32
    keys: torch.Tensor  # [B, Hkv, N, D] model dtype, cluster-major
    values: torch.Tensor  # [B, Hkv, N, D] model dtype, cluster-major
    offsets: torch.Tensor  # [B, Hkv, C + 1] int64 (offsets[..., 0] = 0, offsets[..., -1] = N)
    positions: torch.Tensor  # [B, Hkv, N] int64 token position of every cluster-major row

    @property
    def num_clusters(self) -> int:
        return int(self.sizes.shape[-1])

    def head(self, b: int, kv_head: int) -> dict[str, torch.Tensor]:
        """Tensors of one (sequence, kv_head), in the store's ClusterSegment field names."""
        return {
            "centroids": self.centroids[b, kv_head],
            "sizes": self.sizes[b, kv_head],
            "value_sums": self.value_sums[b, kv_head],
            "keys": self.keys[b, kv_head],
            "values": self.values[b, kv_head],
            "offsets": self.offsets[b, kv_head],
        }


def build_segment(
    keys: torch.Tensor,  # [B, Hkv, N, D] post-RoPE keys to cluster
    values: torch.Tensor,  # [B, Hkv, N, D]
    first_position: int,
    layer: int,
    first_cluster: int,
    num_segments: int,
    clusters_per_segment: int,
    iterations: int,
    final_chunk: int,
) -> IndexSegment:
    """Cluster (B, Hkv) rows in one batched call and lay the K/V out cluster-major."""
    b, h, n, d = keys.shape
    labels, centroids, sizes = segmented_kmeans(
        keys.reshape(b * h, n, d), num_segments, clusters_per_segment, iterations, final_chunk
    )  # labels [R, N], centroids [R, C, D], sizes [R, C]
    rows, c = sizes.shape
    flat_v = values.reshape(rows, n, d)
    value_sums = torch.zeros(rows, c, d, dtype=torch.float32, device=keys.device)
    value_sums.scatter_add_(1, labels.unsqueeze(-1).expand(rows, n, d), flat_v.float())
    order = torch.sort(labels, dim=1, stable=True).indices  # [R, N] cluster-major permutation
    gather = order.unsqueeze(-1).expand(rows, n, d)
    offsets = torch.zeros(rows, c + 1, dtype=torch.int64, device=keys.device)
    offsets[:, 1:] = sizes.cumsum(dim=1)
    return IndexSegment(
        layer=layer,
        first_cluster=first_cluster,
        centroids=centroids.reshape(b, h, c, d),
        sizes=sizes.reshape(b, h, c),
        value_sums=value_sums.reshape(b, h, c, d),
        keys=keys.reshape(rows, n, d).gather(1, gather).reshape(b, h, n, d),
        values=flat_v.gather(1, gather).reshape(b, h, n, d),
        offsets=offsets.reshape(b, h, c + 1),
        positions=(order + first_position).reshape(b, h, n),
    )


class ClusterMetadata:
    """Device-resident metadata of all clusters of one layer, concatenated over segments."""

    def __init__(
        self, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.scan_dtype = dtype
        self.centroids = torch.zeros(batch, kv_heads, 0, head_dim, dtype=dtype, device=device)
        self.value_sums = torch.zeros(batch, kv_heads, 0, head_dim, device=device)  # fp32
        self.sizes = torch.zeros(batch, kv_heads, 0, dtype=torch.int64, device=device)

    @property
    def num_clusters(self) -> int:
        return int(self.sizes.shape[-1])

    def append(self, segment: IndexSegment) -> None:
        """Add a segment's clusters (ids continue after the existing ones)."""
        assert segment.first_cluster == self.num_clusters
        self.centroids = torch.cat([self.centroids, segment.centroids.to(self.scan_dtype)], 2)
        self.value_sums = torch.cat([self.value_sums, segment.value_sums], 2)
        self.sizes = torch.cat([self.sizes, segment.sizes], 2)
