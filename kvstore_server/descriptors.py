"""FetchDescriptors core: where the requested clusters lie in the shared-memory arena.

Validation is the same as FetchClusters (same fields, same messages); instead of gathering bytes
the store answers, per entry, the slab, the extent generation, the byte offsets of the head's key
and value regions and each cluster's first row, and leases the extents for the reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kvstore_server.arena import Extent, SharedArena
from kvstore_server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from kvstore_server.fetch import FetchEntry, _check_ids, _resolve
from kvstore_server.segments import HeadStore
from kvstore_server.store import Store
from wavekv_proto.layout import DESCRIPTOR_COLUMN_NAMES, DTYPE

TABLE_COLUMNS = DESCRIPTOR_COLUMN_NAMES[:DTYPE]  # the dtype column is added on the wire
REPLY_BYTES_PER_CLUSTER = 16  # row start and length, int64 each
REPLY_BYTES_PER_ENTRY = 8 * len(DESCRIPTOR_COLUMN_NAMES) + 8


@dataclass(slots=True)
class DescriptorPlan:
    """Every entry's descriptor as columns (E entries, K requested clusters in all)."""

    arena_id: str
    lease_id: int
    lease_ttl_s: float
    table: np.ndarray  # [E, len(TABLE_COLUMNS)] int64
    dtypes: list[str]  # [E] dtype names
    counts: np.ndarray  # [E] int64 clusters per entry
    row_starts: np.ndarray  # [K] int64 first row of each cluster in its head
    lens: np.ndarray  # [K] int64 rows of each cluster


def plan_descriptors(
    store: Store,
    namespace: str,
    entries: list[FetchEntry],
    lease_ttl_s: float,
    release_leases: list[int],
    whole_heads: bool = False,
    max_reply_bytes: int = 1 << 62,
) -> DescriptorPlan:
    """Validate like FetchClusters, then describe and lease every entry's extent. With
    `whole_heads` every entry must ask for no ids and is answered with all of its clusters.
    max_reply_bytes < 0: shared memory is not offered by this store."""
    arena = store.arena(namespace) if store.arenas.shared and max_reply_bytes >= 0 else None
    if not isinstance(arena, SharedArena):
        raise FailedPrecondition("shared memory is off on this store: use FetchClusters")
    if lease_ttl_s < 0 or not np.isfinite(lease_ttl_s):
        raise InvalidArgument(f"lease_ttl_s={lease_ttl_s} must be a finite number >= 0")
    arena.release_leases(release_leases)
    if not entries:
        raise InvalidArgument("entries is empty")
    heads = [_resolve(store, namespace, i, e) for i, e in enumerate(entries)]
    if whole_heads:
        entries = _whole(entries, heads)
    counts = np.fromiter((e[3].shape[0] for e in entries), np.int64, len(entries))  # [E]
    limits = np.fromiter((h.num_clusters if h else 0 for _, h in heads), np.int64, len(entries))
    all_ids = np.concatenate([e[3] for e in entries]) if counts.sum() else np.empty(0, np.int64)
    _check_ids(all_ids, counts, limits)
    reply = all_ids.shape[0] * REPLY_BYTES_PER_CLUSTER + len(entries) * REPLY_BYTES_PER_ENTRY
    if reply > max_reply_bytes:
        raise ResourceExhausted(
            f"FetchDescriptors reply would be {reply} bytes > {max_reply_bytes} "
            f"({all_ids.shape[0]} clusters in {len(entries)} entries): split the request"
        )
    rows: list[tuple[int, ...]] = []  # [E] table rows
    starts, ends, extents = [], [], []
    for (geometry, head), entry in zip(heads, entries, strict=True):
        extent: Extent | None = head.extent if head is not None else None
        if head is None or extent is None:  # nothing stored here: only empty requests reach here
            rows.append((0, 0, 0, 0, 0, 0, geometry.row_bytes, geometry.head_dim))
            continue
        ids = entry[3]
        starts.append(head.offsets[ids])  # [n]
        ends.append(head.offsets[ids + 1])
        base, slab, gen = extent.offset, extent.slab, extent.generation
        values = base + head.capacity_rows * head.row_bytes
        size = arena.slab_size(slab)
        rows.append((slab, size, gen, base, base, values, geometry.row_bytes, geometry.head_dim))
        extents.append(extent)
    table = np.array(rows, np.int64).reshape(len(entries), len(TABLE_COLUMNS))  # [E, 8]
    row_starts = np.concatenate(starts) if starts else np.empty(0, np.int64)  # [K]
    lens = np.concatenate(ends) - row_starts if ends else row_starts
    lease_id, ttl = arena.lease(extents, lease_ttl_s)
    dtypes = [geometry.dtype for geometry, _ in heads]
    return DescriptorPlan(
        arena.arena_id,
        lease_id,
        ttl,
        table,
        dtypes,
        counts,
        row_starts.astype(np.int64, copy=False),
        lens.astype(np.int64, copy=False),
    )


def _whole(
    entries: list[FetchEntry], heads: Sequence[tuple[object, HeadStore | None]]
) -> list[FetchEntry]:
    """Each entry with every cluster id of its head (none if it has no segments)."""
    out = []
    for i, ((sid, layer, kv_head, ids), (_, head)) in enumerate(zip(entries, heads, strict=True)):
        if ids.shape[0]:
            raise InvalidArgument(
                f"entries[{i}].cluster_ids has {ids.shape[0]} ids; with whole_heads send none"
            )
        n = head.num_clusters if head is not None else 0
        out.append((sid, layer, kv_head, np.arange(n, dtype=np.int64)))
    return out
