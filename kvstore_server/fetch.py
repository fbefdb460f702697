"""FetchClusters core: validate a batch of (sequence, layer, kv_head, cluster ids), lay out the
payload, and gather it chunk by chunk with vectorised numpy takes.

Payload layout per entry, in request order: keys [M_i, D] then values [M_i, D], each section
starting on a 64-byte boundary (so the client can view it as a typed tensor in place). The
server never holds the whole payload: `stream_payload` gathers the next chunk into one reused
stage buffer while the previous chunk is on the wire, so a call costs O(chunk) memory whatever
its size; `max_fetch_bytes` bounds the size and an id asked twice in one entry is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kvstore_server.arena import Extent
from kvstore_server.errors import InvalidArgument, ResourceExhausted
from kvstore_server.segments import HeadStore
from kvstore_server.sequence import Geometry
from kvstore_server.store import Store
from wavekv_proto.layout import FETCH_ALIGN

ALIGN = FETCH_ALIGN
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
    keys: np.ndarray | None  # [N, W] head keys viewed as words (None: nothing to fetch)
    values: np.ndarray | None  # [N, W] head values viewed as words


@dataclass(slots=True)
class FetchPlan:
    layouts: list[EntryLayout]
    total_bytes: int
    extents: list[Extent]  # the extents the layouts read: pin them while streaming


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_fetch(
    store: Store, namespace: str, entries: list[FetchEntry], max_bytes: int = 1 << 62
) -> FetchPlan:
    """Validate all entries (raising StoreError naming the field) and lay out the payload.

    Per entry only the head lookup and two offset lookups run in Python; range checks and row
    index expansion run once over all entries' clusters.
    """
    if not entries:
        raise InvalidArgument("entries is empty")
    heads = [_resolve(store, namespace, i, e) for i, e in enumerate(entries)]
    counts = np.fromiter((e[3].shape[0] for e in entries), np.int64, len(entries))  # [E]
    limits = np.fromiter((h.num_clusters if h else 0 for _, h in heads), np.int64, len(entries))
    all_ids = np.concatenate([e[3] for e in entries]) if counts.sum() else np.empty(0, np.int64)
    _check_ids(all_ids, counts, limits)
    _check_unique(all_ids, counts, limits)
    starts = np.empty(all_ids.shape[0], np.int64)  # [K] first row of each cluster
    ends = np.empty(all_ids.shape[0], np.int64)  # [K] end row of each cluster
    pos = 0
    for (_, head), entry in zip(heads, entries, strict=True):
        ids, n = entry[3], entry[3].shape[0]
        if n:
            assert head is not None
            offsets = head.offsets
            np.take(offsets, ids, out=starts[pos : pos + n])
            np.take(offsets, ids + 1, out=ends[pos : pos + n])
        pos += n
    lens = ends - starts  # [K]
    row_cum = np.zeros(all_ids.shape[0] + 1, np.int64)  # [K + 1]
    np.cumsum(lens, out=row_cum[1:])
    rows_all = np.arange(int(row_cum[-1]), dtype=np.int64)  # [M_total]
    rows_all += np.repeat(starts - row_cum[:-1], lens)
    bounds = np.zeros(len(entries) + 1, np.int64)  # [E + 1] cluster index bounds
    np.cumsum(counts, out=bounds[1:])
    plan = _layout(heads, bounds.tolist(), row_cum, rows_all)
    if plan.total_bytes > max_bytes:
        raise ResourceExhausted(
            f"FetchClusters would return {plan.total_bytes} bytes > max_fetch_bytes={max_bytes}: "
            f"split the request"
        )
    return plan


def _resolve(
    store: Store, namespace: str, i: int, entry: FetchEntry
) -> tuple[Geometry, HeadStore | None]:
    sequence_id, layer, kv_head, ids = entry
    seq = store.get(namespace, sequence_id)
    seq.check_head(f"entries[{i}].", layer, kv_head)
    if ids.ndim != 1:
        raise InvalidArgument(f"entries[{i}].cluster_ids shape={list(ids.shape)}, want [n]")
    return seq.geometry, seq.head(layer, kv_head)


def _layout(
    heads: list[tuple[Geometry, HeadStore | None]],
    bounds: list[int],  # [E + 1] cluster index bounds per entry
    row_cum: np.ndarray,  # [K + 1] row prefix sums over all requested clusters
    rows_all: np.ndarray,  # [M_total] row index of every fetched row
) -> FetchPlan:
    layouts = []
    extents: dict[int, Extent] = {}
    cursor = 0
    row_bounds = row_cum[bounds].tolist()  # [E + 1]
    for i, (geometry, head) in enumerate(heads):
        r0, r1 = row_bounds[i], row_bounds[i + 1]
        cluster_offsets = row_cum[bounds[i] : bounds[i + 1] + 1] - r0  # [n + 1]
        nbytes = (r1 - r0) * geometry.row_bytes
        keys_offset, values_offset = cursor, _align(cursor + nbytes)
        cursor = _align(values_offset + nbytes)
        keys = values = None
        if head is not None and r1 > r0:
            word = _word_dtype(geometry.row_bytes)  # rows copied as wide words: ~4x faster
            keys, values = head.keys.view(word), head.values.view(word)
            if head.extent is not None:
                extents[id(head.extent)] = head.extent
        layouts.append(
            EntryLayout(
                geometry.dtype,
                geometry.head_dim,
                r1 - r0,
                keys_offset,
                values_offset,
                cluster_offsets,
                rows_all[r0:r1],
                keys,
                values,
            )
        )
    return FetchPlan(layouts, cursor, list(extents.values()))


def _word_dtype(row_bytes: int) -> np.dtype:
    """Widest unsigned integer dtype whose size divides row_bytes."""
    for dt in (np.uint64, np.uint32, np.uint16):
        if row_bytes % np.dtype(dt).itemsize == 0:
            return np.dtype(dt)
    return np.dtype(np.uint8)


def _check_ids(
    all_ids: np.ndarray,  # [K] int64, every entry's cluster ids concatenated
    counts: np.ndarray,  # [E] ids per entry
    limits: np.ndarray,  # [E] num_clusters per entry
) -> None:
    bad = (all_ids < 0) | (all_ids >= np.repeat(limits, counts))  # [K]
    if not bad.any():
        return
    k = int(np.argmax(bad))
    i = int(np.searchsorted(np.cumsum(counts), k, side="right"))
    j = k - int(counts[:i].sum())
    raise InvalidArgument(
        f"entries[{i}].cluster_ids[{j}]={int(all_ids[k])} out of range [0, {int(limits[i])})"
    )


def _check_unique(
    all_ids: np.ndarray,  # [K] int64, range-checked
    counts: np.ndarray,  # [E]
    limits: np.ndarray,  # [E]
) -> None:
    """Refuse an id asked twice within one entry (one sort over all entries)."""
    if all_ids.shape[0] < 2:
        return
    entry = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)  # [K]
    keys = entry * (int(limits.max()) + 1) + all_ids  # [K] unique iff (entry, id) pairs are
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if not same.shape[0]:
        return
    k = int(order[same[0] + 1])
    i = int(entry[k])
    j = k - int(counts[:i].sum())
    raise InvalidArgument(
        f"entries[{i}].cluster_ids[{j}]={int(all_ids[k])} is repeated (ask for each id once)"
    )


class BufferPool:
    """Stage buffers of one size reused between calls (fresh pages cost a fault each); at most
    `max_buffers` are kept, so the pool holds at most max_buffers x nbytes."""

    def __init__(self, nbytes: int, max_buffers: int = 2) -> None:
        self.nbytes = nbytes
        self.max_buffers = max_buffers
        self._free: list[np.ndarray] = []

    def take(self) -> np.ndarray:  # [nbytes] uint8
        return self._free.pop() if self._free else np.empty(self.nbytes, np.uint8)

    def give(self, buf: np.ndarray) -> None:
        if len(self._free) < self.max_buffers:
            self._free.append(buf)

    @property
    def held_bytes(self) -> int:
        return len(self._free) * self.nbytes


def stream_payload(plan: FetchPlan, stage: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(payload offset, bytes) pieces covering [0, total_bytes) in order, each at most
    len(stage) bytes, gathered into `stage` [S] uint8 (S >= the widest row + ALIGN); a piece is
    valid until the next one is asked for. Alignment gaps are zeros."""
    cap = stage.shape[0]
    start = fill = 0  # payload offset of stage[0]; bytes staged
    for lay in plan.layouts:
        if lay.keys is None or lay.values is None:
            continue
        rb = lay.keys.itemsize * lay.keys.shape[1]
        for src, off in ((lay.keys, lay.keys_offset), (lay.values, lay.values_offset)):
            gap = off - start - fill
            if fill and fill + gap + rb > cap:
                yield start, stage[:fill]
                start, fill = start + fill, 0
            stage[fill : fill + gap] = 0
            fill += gap
            i, rows = 0, lay.rows
            while i < rows.shape[0]:
                n = min(rows.shape[0] - i, (cap - fill) // rb)
                if n == 0:
                    yield start, stage[:fill]
                    start, fill = start + fill, 0
                    continue
                dst = stage[fill : fill + n * rb].view(src.dtype).reshape(n, -1)
                np.take(src, rows[i : i + n], axis=0, out=dst, mode="clip")
                fill, i = fill + n * rb, i + n
    tail = plan.total_bytes - start - fill
    if fill and fill + tail > cap:
        yield start, stage[:fill]
        start, fill = start + fill, 0
    stage[fill : fill + tail] = 0
    fill += tail
    if fill:
        yield start, stage[:fill]


def gather(plan: FetchPlan) -> np.ndarray:  # [total_bytes] uint8
    """The whole payload in one new buffer (tests and references)."""
    out = np.empty(plan.total_bytes, np.uint8)
    stage = np.empty(1 << 20, np.uint8)
    for offset, piece in stream_payload(plan, stage):
        out[offset : offset + piece.shape[0]] = piece
    return out
