"""FetchDescriptors core: where the requested clusters lie in the shared-memory arena.

Validation is the same as FetchClusters (same fields, same messages); instead of gathering bytes
the store answers, per entry, the slab, the extent generation, the byte offsets of the head's key
and value regions and each cluster's first row, and leases the extents for the reader.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvstore_server.arena import Extent, SharedArena
from kvstore_server.errors import FailedPrecondition, InvalidArgument
from kvstore_server.fetch import FetchEntry, _check_ids, _resolve
from kvstore_server.store import Store


@dataclass(slots=True)
class EntryDescriptor:
    slab: int
    slab_bytes: int
    generation: int
    extent_offset: int
    keys_offset: int
    values_offset: int
    row_bytes: int
    dtype: str
    head_dim: int
    row_starts: np.ndarray  # [n] int64
    cluster_offsets: np.ndarray  # [n + 1] int64


@dataclass(slots=True)
class DescriptorPlan:
    arena_id: str
    lease_id: int
    lease_ttl_s: float
    entries: list[EntryDescriptor]


def plan_descriptors(
    store: Store,
    namespace: str,
    entries: list[FetchEntry],
    lease_ttl_s: float,
    release_leases: list[int],
) -> DescriptorPlan:
    """Validate like FetchClusters, then describe and lease every entry's extent."""
    arena = store.arena
    if not isinstance(arena, SharedArena):
        raise FailedPrecondition("shared memory is off on this store: use FetchClusters")
    if lease_ttl_s < 0 or not np.isfinite(lease_ttl_s):
        raise InvalidArgument(f"lease_ttl_s={lease_ttl_s} must be a finite number >= 0")
    arena.release_leases(release_leases)
    if not entries:
        raise InvalidArgument("entries is empty")
    heads = [_resolve(store, namespace, i, e) for i, e in enumerate(entries)]
    counts = np.fromiter((e[3].shape[0] for e in entries), np.int64, len(entries))  # [E]
    limits = np.fromiter((h.num_clusters if h else 0 for _, h in heads), np.int64, len(entries))
    all_ids = np.concatenate([e[3] for e in entries]) if counts.sum() else np.empty(0, np.int64)
    _check_ids(all_ids, counts, limits)
    out, extents = [], []
    for (geometry, head), entry in zip(heads, entries, strict=True):
        ids = entry[3]
        extent: Extent | None = head.extent if head is not None else None
        if head is not None and extent is not None:
            starts = head.offsets[ids] if ids.shape[0] else np.empty(0, np.int64)  # [n]
            lens = head.offsets[ids + 1] - starts if ids.shape[0] else starts
            cap_bytes = head.capacity_rows * head.row_bytes
            slab, gen, base = extent.slab, extent.generation, extent.offset
            slab_bytes = arena.slabs[slab].size
            extents.append(extent)
        else:  # nothing stored for this (layer, kv_head): only empty requests reach here
            starts = lens = np.empty(0, np.int64)
            cap_bytes, slab, gen, base, slab_bytes = 0, 0, 0, 0, 0
        offsets = np.zeros(ids.shape[0] + 1, np.int64)  # [n + 1]
        np.cumsum(lens, out=offsets[1:])
        out.append(
            EntryDescriptor(
                slab,
                slab_bytes,
                gen,
                base,
                base,
                base + cap_bytes,
                geometry.row_bytes,
                geometry.dtype,
                geometry.head_dim,
                starts.astype(np.int64, copy=False),
                offsets,
            )
        )
    lease_id, ttl = arena.lease(extents, lease_ttl_s)
    return DescriptorPlan(arena.arena_id, lease_id, ttl, out)
