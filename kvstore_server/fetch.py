"""FetchClusters core: validate a batch of (sequence, layer, kv_head, cluster ids), plan one
payload buffer, and gather every entry's rows into it with vectorised numpy takes.

Payload layout per entry, in request order: keys [M_i, D] then values [M_i, D], each section
starting on a 64-byte boundary (so the client can view it as a typed tensor in place).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kvstore_server.errors import InvalidArgument
from kvstore_server.segments import HeadStore
from kvstore_server.store import Store
from wavekv_proto.codec import itemsize

ALIGN = 64
FetchEntry = tuple[
    str, int, int, np.ndarray
]  # (sequence_id, layer, kv_head, cluster_ids [n] int64)


@dataclass(slots=True)
class EntryLayout:
    dtype: str
    head_dim: int
    num_rows: int
    keys_offset: int
    values_offset: int
    cluster_offsets: np.ndarray  # [n + 1] int64
    rows: np.ndarray  # [M] int64 row index into the head store
    head: HeadStore | None  # None when no rows are fetched


@dataclass(slots=True)
class FetchPlan:
    layouts: list[EntryLayout]
    total_bytes: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_fetch(store: Store, namespace: str, entries: list[FetchEntry]) -> FetchPlan:
    """Validate all entries (raising StoreError naming the field) and lay out the payload."""
    if not entries:
        raise InvalidArgument("entries is empty")
    layouts = []
    cursor = 0
    for i, (sequence_id, layer, kv_head, ids) in enumerate(entries):
        seq = store.get(namespace, sequence_id)
        seq.check_head(f"entries[{i}].", layer, kv_head)
        head = seq.head(layer, kv_head)
        num_clusters = head.num_clusters if head is not None else 0
        _check_ids(i, ids, num_clusters)
        if head is not None and ids.shape[0]:
            rows, cluster_offsets = head.gather_rows(ids)
        else:
            rows, cluster_offsets = np.empty(0, np.int64), np.zeros(ids.shape[0] + 1, np.int64)
        nbytes = rows.shape[0] * seq.geometry.row_bytes
        keys_offset, values_offset = cursor, _align(cursor + nbytes)
        cursor = _align(values_offset + nbytes)
        layouts.append(
            EntryLayout(
                seq.geometry.dtype,
                seq.geometry.head_dim,
                int(rows.shape[0]),
                keys_offset,
                values_offset,
                cluster_offsets,
                rows,
                head,
            )
        )
    return FetchPlan(layouts, cursor)


def _check_ids(i: int, ids: np.ndarray, num_clusters: int) -> None:
    if ids.ndim != 1:
        raise InvalidArgument(f"entries[{i}].cluster_ids shape={list(ids.shape)}, want [n]")
    if ids.shape[0] == 0:
        return
    bad = np.flatnonzero((ids < 0) | (ids >= num_clusters))
    if bad.size:
        j = int(bad[0])
        raise InvalidArgument(
            f"entries[{i}].cluster_ids[{j}]={int(ids[j])} out of range [0, {num_clusters})"
        )


class BufferPool:
    """Reuses payload buffers between FetchClusters calls (fresh pages cost a fault each)."""

    def __init__(self, max_buffers: int = 4) -> None:
        self.max_buffers = max_buffers
        self._free: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray:  # [>= nbytes] uint8
        for i, buf in enumerate(self._free):
            if buf.shape[0] >= nbytes:
                return self._free.pop(i)
        return np.empty(nbytes, np.uint8)

    def give(self, buf: np.ndarray) -> None:
        if len(self._free) < self.max_buffers:
            self._free.append(buf)
        else:  # keep the largest buffers
            smallest = min(range(len(self._free)), key=lambda i: self._free[i].shape[0])
            if self._free[smallest].shape[0] < buf.shape[0]:
                self._free[smallest] = buf


def gather(plan: FetchPlan) -> np.ndarray:  # [total_bytes] uint8
    """Copy every entry's key and value rows into one new payload buffer."""
    out = np.empty(plan.total_bytes, np.uint8)
    for _ in gather_progressively(plan, out):
        pass
    return out


def gather_progressively(plan: FetchPlan, out: np.ndarray) -> Iterator[int]:
    """Gather entry by entry into out [total_bytes] uint8, yielding how many leading bytes are
    final after each entry (so the caller can stream them while the rest is gathered)."""
    for lay in plan.layouts:
        if lay.head is not None and lay.num_rows:
            row_bytes = lay.head.row_bytes
            nbytes = lay.num_rows * row_bytes
            for src, off in (
                (lay.head.keys, lay.keys_offset),
                (lay.head.values, lay.values_offset),
            ):
                dst = out[off : off + nbytes].reshape(lay.num_rows, row_bytes)
                np.take(src, lay.rows, axis=0, out=dst, mode="clip")
        yield lay.values_offset + lay.num_rows * lay.head_dim * itemsize(lay.dtype)
    yield plan.total_bytes
