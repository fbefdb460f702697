"""FetchDescriptors replies, decoded into columns and bounds-checked before anything is read.

A reply comes in one of two forms (wavekv.v1): `PackedDescriptors` (columns as raw int64 bytes,
what this SDK asks for) or repeated `EntryDescriptor` (stores that predate the packed form).
Both decode into one `DescriptorBatch` of numpy columns, checked with a few vectorised
comparisons whatever the number of entries; `BadDescriptorError` names the entry and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from client.errors import StaleDescriptorError
from wavekv_proto.codec import decode_numpy, dtype_name, torch_dtype
from wavekv_proto.layout import (
    DESCRIPTOR_COLUMN_NAMES,
    DESCRIPTOR_COLUMNS,
    DTYPE,
    EXTENT_HEADER_BYTES,
    EXTENT_OFFSET,
    GENERATION,
    HEAD_DIM,
    KEYS_OFFSET,
    ROW_BYTES,
    SLAB,
    SLAB_BYTES,
    VALUES_OFFSET,
)
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

EXTENT_HEADER = EXTENT_HEADER_BYTES
COLUMNS = DESCRIPTOR_COLUMNS
LEGACY_FIELDS = DESCRIPTOR_COLUMN_NAMES  # EntryDescriptor fields in table column order
__all__ = [
    "COLUMNS",
    "DTYPE",
    "EXTENT_HEADER",
    "EXTENT_OFFSET",
    "GENERATION",
    "HEAD_DIM",
    "KEYS_OFFSET",
    "ROW_BYTES",
    "SLAB",
    "SLAB_BYTES",
    "VALUES_OFFSET",
    "BadDescriptorError",
    "Described",
    "DescriptorBatch",
    "ResolveFallback",
    "StaleDescriptorError",
    "decode_reply",
]


class ResolveFallback(RuntimeError):
    """A call the descriptor cache cannot answer (ids beyond the cached cluster counts, rows
    over max_tokens, mixed geometries): take the per-call descriptor path."""


class BadDescriptorError(ValueError):
    """A descriptor points outside its slab or names an unknown slab."""


@dataclass(slots=True)
class Described:
    """One entry of a FetchDescriptors reply."""

    slab: int
    generation: int
    extent_offset: int
    keys_row: int  # first key row, in units of row_bytes from the slab start
    values_row: int
    row_bytes: int
    dtype: torch.dtype
    head_dim: int
    row_starts: np.ndarray  # [n] int64
    cluster_offsets: np.ndarray  # [n + 1] int64

    @property
    def num_rows(self) -> int:
        return int(self.cluster_offsets[-1])

    def rows(self) -> np.ndarray:  # [M] int64 row index (relative to keys_row / values_row)
        lens = np.diff(self.cluster_offsets)
        total = int(self.cluster_offsets[-1])
        rows = np.arange(total, dtype=np.int64)
        rows += np.repeat(self.row_starts - self.cluster_offsets[:-1], lens)
        return rows


@dataclass(slots=True)
class DescriptorBatch:
    """A decoded reply: E entries, K clusters in all, as columns."""

    lease_id: int
    lease_ttl_s: float
    table: np.ndarray  # [E, 9] int64 (see the column constants)
    bounds: np.ndarray  # [E + 1] int64: entry i's clusters are [bounds[i], bounds[i + 1])
    row_starts: np.ndarray  # [K] int64 first row of each cluster (relative to keys/values row)
    lens: np.ndarray  # [K] int64 rows of each cluster
    whole_heads: bool = False  # the store described every cluster of each entry's head
    _entries: list[Described] | None = field(default=None, repr=False)

    @property
    def num_entries(self) -> int:
        return int(self.table.shape[0])

    def entry_rows(self) -> np.ndarray:  # [E] int64 rows fetched per entry
        cum = np.zeros(self.lens.shape[0] + 1, np.int64)
        np.cumsum(self.lens, out=cum[1:])
        return cum[self.bounds[1:]] - cum[self.bounds[:-1]]

    @property
    def entries(self) -> list[Described]:
        """Per-entry view (built on first use; the gathers use the columns)."""
        if self._entries is None:
            self._entries = [self._entry(i) for i in range(self.num_entries)]
        return self._entries

    def _entry(self, i: int) -> Described:
        t = self.table[i].tolist()
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        offsets = np.zeros(hi - lo + 1, np.int64)
        np.cumsum(self.lens[lo:hi], out=offsets[1:])
        row_bytes = t[ROW_BYTES]
        name = dtype_name(t[DTYPE])
        assert name is not None  # checked by decode
        return Described(
            t[SLAB],
            t[GENERATION],
            t[EXTENT_OFFSET],
            t[KEYS_OFFSET] // row_bytes,
            t[VALUES_OFFSET] // row_bytes,
            row_bytes,
            torch_dtype(name),
            t[HEAD_DIM],
            self.row_starts[lo:hi],
            offsets,
        )


def decode_reply(
    msg: pb.FetchDescriptorsResponse, slab_size: Callable[[int], int]
) -> DescriptorBatch:
    """Decode either form and bounds-check it; `slab_size(index)` maps the slab (and raises
    SharedMemoryUnavailable when it cannot)."""
    if msg.HasField("packed"):
        table, counts, starts, lens = _packed(msg.packed)
    else:
        table, counts, starts, lens = _legacy(msg.entries)
    bounds = np.zeros(table.shape[0] + 1, np.int64)
    np.cumsum(counts, out=bounds[1:])
    batch = DescriptorBatch(
        msg.lease_id, msg.lease_ttl_s, table, bounds, starts, lens, msg.whole_heads
    )
    _check(batch, slab_size)
    return batch


def _column(name: str, data: bytes, width: int = 1) -> np.ndarray:
    if len(data) % (8 * width):
        raise BadDescriptorError(f"packed.{name}: {len(data)} bytes, not rows of {width} int64")
    return (
        np.frombuffer(data, np.int64).reshape(-1, width)
        if width > 1
        else np.frombuffer(data, np.int64)
    )


def _packed(p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    table = _column("table", p.table, COLUMNS)  # [E, 9]
    counts, starts, lens = (_column(n, getattr(p, n)) for n in ("counts", "row_starts", "lens"))
    if counts.shape[0] != table.shape[0] or starts.shape != lens.shape:
        raise BadDescriptorError(
            f"packed: {table.shape[0]} table rows, {counts.shape[0]} counts, "
            f"{starts.shape[0]} row_starts, {lens.shape[0]} lens"
        )
    if (counts < 0).any() or int(counts.sum()) != starts.shape[0]:
        raise BadDescriptorError(f"packed.counts sum to {int(counts.sum())} != {starts.shape[0]}")
    return table, counts, starts, lens


def _legacy(entries: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows: list[tuple[int, ...]] = []
    counts: list[int] = []
    starts: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    for i, e in enumerate(entries):
        s, _ = decode_numpy(e.row_starts)
        offsets, _ = decode_numpy(e.cluster_offsets)
        if offsets.shape != (s.shape[0] + 1,) or (offsets.shape[0] and offsets[0] != 0):
            raise BadDescriptorError(f"entries[{i}].cluster_offsets shape={list(offsets.shape)}")
        rows.append(tuple(getattr(e, f) for f in LEGACY_FIELDS))
        counts.append(s.shape[0])
        starts.append(s.astype(np.int64, copy=False))
        lens.append(np.diff(offsets.astype(np.int64, copy=False)))
    table = np.array(rows, np.uint64).view(np.int64).reshape(-1, COLUMNS)
    if not starts:
        starts = lens = [np.empty(0, np.int64)]
    return table, np.asarray(counts, np.int64), np.concatenate(starts), np.concatenate(lens)


def _first(bad: np.ndarray) -> int | None:
    return int(np.argmax(bad)) if bad.any() else None


def _check(batch: DescriptorBatch, slab_size: Callable[[int], int]) -> None:
    t = batch.table
    known = np.array([dtype_name(int(c)) is not None for c in t[:, DTYPE]], bool)  # [E]
    i = _first(~known | (t[:, ROW_BYTES] <= 0))
    if i is not None:
        raise BadDescriptorError(
            f"entries[{i}]: dtype={int(t[i, DTYPE])} row_bytes={int(t[i, ROW_BYTES])}"
        )
    rows = batch.entry_rows()  # [E]
    used = rows > 0
    sizes = np.zeros(t.shape[0], np.int64)  # [E] mapped size of each used entry's slab
    for slab in np.unique(t[used, SLAB]).tolist():
        sizes[used & (t[:, SLAB] == slab)] = slab_size(slab)
    entry_of = np.repeat(np.arange(t.shape[0]), np.diff(batch.bounds))  # [K]
    k = _first((batch.lens < 0) | (batch.row_starts < 0))
    if k is not None:
        raise BadDescriptorError(f"entries[{int(entry_of[k])}]: negative row_starts or lens")
    rb = t[:, ROW_BYTES]
    i = _first(used & ((t[:, KEYS_OFFSET] % rb != 0) | (t[:, VALUES_OFFSET] % rb != 0)))
    if i is not None:
        raise BadDescriptorError(f"entries[{i}]: offsets not multiples of row_bytes={int(rb[i])}")
    last = np.zeros(t.shape[0], np.int64)  # [E] end row of each entry's furthest cluster
    has = np.diff(batch.bounds) > 0
    if has.any():
        ends = batch.row_starts + batch.lens  # [K]
        last[has] = np.maximum.reduceat(ends, batch.bounds[:-1][has])
    for col, name in ((KEYS_OFFSET, "keys_offset"), (VALUES_OFFSET, "values_offset")):
        end = t[:, col] + last * rb
        i = _first(used & ((t[:, col] < t[:, EXTENT_OFFSET]) | (end > sizes) | (end < 0)))
        if i is not None:
            raise BadDescriptorError(
                f"entries[{i}].{name}={int(t[i, col])}: rows end at byte {int(end[i])}, "
                f"slab {int(t[i, SLAB])} has {int(sizes[i])}"
            )
    off = t[:, EXTENT_OFFSET]
    i = _first(used & ((off < EXTENT_HEADER) | (off > sizes)))
    if i is not None:
        raise BadDescriptorError(f"entries[{i}].extent_offset={int(off[i])} outside the slab")
