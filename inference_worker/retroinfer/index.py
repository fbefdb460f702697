"""Wave index: cluster-major segments (to upload) and the device-resident cluster metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernels.cluster_sums import cluster_sums
from .kmeans import cluster_keys


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
    use_triton: bool | None = None,
) -> IndexSegment:
    """Cluster (B, Hkv) rows in one batched call and lay the K/V out cluster-major.
    use_triton: None picks the Triton k-means where available, False forces the torch path."""
    b, h, n, d = keys.shape
    cl = cluster_keys(
        keys.reshape(b * h, n, d),
        num_segments,
        clusters_per_segment,
        iterations,
        final_chunk,
        use_triton=use_triton,
    )
    rows, c = cl.sizes.shape
    value_sums, sorted_values = cluster_sums(
        values.reshape(rows, n, d), cl.order, cl.offsets, gather=True, use_triton=use_triton
    )  # [R, C, D] fp32, [R, N, D]
    assert sorted_values is not None
    return IndexSegment(
        layer=layer,
        first_cluster=first_cluster,
        centroids=cl.centroids.reshape(b, h, c, d),
        sizes=cl.sizes.reshape(b, h, c),
        value_sums=value_sums.reshape(b, h, c, d),
        keys=cl.sorted_keys.reshape(b, h, n, d),
        values=sorted_values.reshape(b, h, n, d),
        offsets=cl.offsets.reshape(b, h, c + 1),
        positions=(cl.order + first_position).reshape(b, h, n),
    )


class ClusterMetadata:
    """Device-resident metadata of all clusters of one layer for B slots. Row b holds its
    sequence's clusters 0 .. counts[b] - 1 (its segments concatenated); the width C is the
    largest count, shorter rows are padded with empty clusters (size 0)."""

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        centroid_dtype: torch.dtype | None = None,
    ) -> None:
        self.scan_dtype = dtype  # value sums (and by default centroids) in the model dtype
        self.centroid_dtype = centroid_dtype or dtype
        self.counts = [0] * batch  # clusters of each slot's sequence
        self.centroids = torch.zeros(
            batch, kv_heads, 0, head_dim, dtype=self.centroid_dtype, device=device
        )
        # int8 centroids: [B, H, C] fp32, centroid j is centroids[..., j, :] * scale[..., j]
        self.centroid_scale: torch.Tensor | None = None
        if self.centroid_dtype == torch.int8:
            self.centroid_scale = torch.zeros(batch, kv_heads, 0, device=device)
        self.value_sums = torch.zeros(batch, kv_heads, 0, head_dim, dtype=dtype, device=device)
        self.sizes = torch.zeros(batch, kv_heads, 0, dtype=torch.int64, device=device)

    @property
    def num_clusters(self) -> int:
        """The width C (the largest slot's cluster count)."""
        return int(self.sizes.shape[-1])

    def append(self, slots: list[int], segment: IndexSegment) -> None:
        """Add a segment of len(slots) sequences (row i belongs to slot slots[i]); its ids
        continue each slot's clusters (every listed slot holds segment.first_cluster)."""
        if any(self.counts[s] != segment.first_cluster for s in slots):
            raise ValueError(
                f"segment.first_cluster={segment.first_cluster} but slots {slots} hold "
                f"{[self.counts[s] for s in slots]} clusters"
            )
        end = segment.first_cluster + segment.num_clusters
        if end > self.num_clusters:
            self._widen(end)
        cent, scale = store_centroids(segment.centroids, self.centroid_dtype)
        at = slice(segment.first_cluster, end)
        idx = torch.tensor(slots, device=self.sizes.device)
        self.centroids[idx, :, at] = cent
        if self.centroid_scale is not None:
            assert scale is not None
            self.centroid_scale[idx, :, at] = scale
        self.value_sums[idx, :, at] = segment.value_sums.to(self.scan_dtype)
        self.sizes[idx, :, at] = segment.sizes
        for s in slots:
            self.counts[s] = end

    def grow(self, batch: int) -> None:
        """`batch` slots (the new ones hold no cluster)."""
        extra = batch - len(self.counts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            zeros = torch.zeros(extra, *t.shape[1:], dtype=t.dtype, device=t.device)
            return torch.cat([t, zeros])

        self.centroids, self.value_sums = pad(self.centroids), pad(self.value_sums)
        self.sizes = pad(self.sizes)
        if self.centroid_scale is not None:
            self.centroid_scale = pad(self.centroid_scale)
        self.counts.extend([0] * extra)

    def clear(self, slot: int) -> None:
        """The slot holds no cluster (its columns become empty clusters)."""
        self.sizes[slot] = 0
        self.counts[slot] = 0

    def _widen(self, width: int) -> None:
        """Every row padded with empty clusters to `width` columns."""
        extra = width - self.num_clusters

        def pad(t: torch.Tensor, feature: bool) -> torch.Tensor:
            shape = (*t.shape[:2], extra, *t.shape[3:]) if feature else (*t.shape[:2], extra)
            return torch.cat([t, torch.zeros(shape, dtype=t.dtype, device=t.device)], 2)

        self.centroids = pad(self.centroids, True)
        self.value_sums = pad(self.value_sums, True)
        self.sizes = pad(self.sizes, False)
        if self.centroid_scale is not None:
            self.centroid_scale = pad(self.centroid_scale, False)


def store_centroids(
    centroids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Centroids [..., C, D] as stored in `dtype`: (stored, per-centroid scale [..., C] for
    int8, else None). fp8 is clamped to its finite range first (torch 2.11's cast gives NaN
    beyond it)."""
    if dtype == torch.int8:
        return quantize_centroids(centroids)
    if dtype.is_floating_point and dtype.itemsize == 1:
        top = torch.finfo(dtype).max
        return centroids.clamp(-top, top).to(dtype), None
    return centroids.to(dtype), None


def dequantize_centroids(stored: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """store_centroids' inverse up to rounding: fp32 [..., C, D]."""
    out = stored.float()
    return out if scale is None else out * scale.unsqueeze(-1)


def quantize_centroids(centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per centroid: centroids [..., C, D] ->
    (int8 [..., C, D], scale [..., C] fp32) with centroid ~= int8 * scale, scale = amax / 127
    (an all-zero centroid, e.g. an empty cluster's, gets scale 0 and stays 0)."""
    c = centroids.float()
    scale = c.abs().amax(-1) / 127  # [..., C]
    safe = torch.where(scale > 0, scale, 1.0).unsqueeze(-1)
    return (c / safe).round().clamp(-127, 127).to(torch.int8), scale
