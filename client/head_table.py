"""The descriptor cache's table: whole-head layouts as columns, on the host and on devices.

One slot per cached (sequence, layer, kv_head): its extent (slab, offset, generation), the
byte offsets of its key and value regions, geometry, and the first row and length of each of
its C clusters (flat columns over all slots; `first[slot]` indexes them). Device copies are
appended to incrementally (only new slots are copied). Source rows are kept two ways: counted
from the start of the head's slab (CPU gathers) and from one base address shared by every slab
(slab 0's mapping; UVA pointers are host pointers), so ONE GPU launch reads from any slab.
Dropped slots stay allocated until the dead outnumber the live, then the table is cleared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from client.descriptors import (
    DTYPE,
    EXTENT_HEADER,
    EXTENT_OFFSET,
    GENERATION,
    HEAD_DIM,
    KEYS_OFFSET,
    ROW_BYTES,
    SLAB,
    VALUES_OFFSET,
    DescriptorBatch,
    ResolveFallback,
)
from client.resolve_kernel import Columns, RunTable
from client.runs import expand_runs
from client.shm import ArenaReader, _CudaAlias
from wavekv_proto.codec import dtype_name, torch_dtype

HeadKey = tuple[str, int, int]
# per-slot host columns
_COLUMNS = ("slab", "generation", "extent", "keys_row", "values_row", "keys_slab_row",
            "row_bytes", "head_dim", "dtype", "clusters", "first", "longest",
            "aligned", "header_word")  # fmt: skip


class _Column:
    """A growable int64 column with lazily synced device copies."""

    def __init__(self) -> None:
        self.host = np.zeros(256, np.int64)
        self.n = 0
        self._dev: dict[str, tuple[torch.Tensor, int]] = {}

    def extend(self, values: np.ndarray) -> None:
        end = self.n + values.shape[0]
        if end > self.host.shape[0]:
            grown = np.zeros(max(end, 2 * self.host.shape[0]), np.int64)
            grown[: self.n] = self.host[: self.n]
            self.host = grown
        self.host[self.n : end] = values
        self.n = end

    @property
    def values(self) -> np.ndarray:  # [n]
        return self.host[: self.n]

    def on(self, device: torch.device) -> torch.Tensor:  # [n] int64 on `device`
        if device.type == "cpu":
            return torch.from_numpy(self.host[: self.n])
        key = str(device)
        tensor, synced = self._dev.get(key, (None, 0))
        if tensor is None or tensor.shape[0] < self.n:
            grown = torch.empty(self.host.shape[0], dtype=torch.int64, device=device)
            if tensor is not None:
                grown[:synced] = tensor[:synced]
            tensor = grown
        if synced < self.n:
            tensor[synced : self.n].copy_(torch.from_numpy(self.host[synced : self.n]))
        self._dev[key] = (tensor, self.n)
        return tensor[: self.n]


@dataclass(slots=True)
class DeviceColumns:
    """The table on one device: what the id lookup reads, and the extent headers to re-check."""

    lookup: Columns
    header_word: torch.Tensor  # [S] int64 word (from the base) of the extent's header
    generation: torch.Tensor  # [S] the generation the header must still hold


class HeadTable:
    def __init__(self, arena: ArenaReader) -> None:
        self.arena = arena
        self.clear()

    def clear(self) -> None:
        self.version = getattr(self, "version", 0) + 1  # changes whenever slots change
        self._index: dict[HeadKey, int] = {}
        self._keys: list[HeadKey | None] = []
        self._cols = {name: _Column() for name in _COLUMNS}
        self._starts, self._lens = _Column(), _Column()
        self._starts.extend(np.zeros(1, np.int64))  # a sentinel: lookups of empty heads stay
        self._lens.extend(np.zeros(1, np.int64))  # in bounds (their lengths are masked to 0)
        self._registered: set[tuple[str, int, int]] = set()
        self._alias: dict[tuple[str, int, int], torch.Tensor] = {}
        self._ready: tuple[str, int, int] | None = None  # (device, row_bytes, version) ready
        self._on_device: dict[str, tuple[int, DeviceColumns]] = {}  # device -> (version, cols)

    def keys(self) -> list[HeadKey]:
        return list(self._index)

    def missing(self, keys: Sequence[HeadKey]) -> list[HeadKey]:
        return list(dict.fromkeys(k for k in keys if k not in self._index))

    def slots(self, keys: Sequence[HeadKey]) -> np.ndarray:  # [E] int64
        return np.fromiter((self._index[k] for k in keys), np.int64, len(keys))

    def add(self, keys: list[HeadKey], batch: DescriptorBatch) -> None:
        """Cache `keys` from a whole-head reply (entry i describes keys[i])."""
        t = batch.table  # [E, 9]
        counts = np.diff(batch.bounds)  # [E]
        rb = t[:, ROW_BYTES]
        base = self._base()
        address = np.array([self._address(int(s)) for s in t[:, SLAB]], np.int64) - base  # [E]
        byte_k, byte_v = address + t[:, KEYS_OFFSET], address + t[:, VALUES_OFFSET]
        longest = np.zeros(len(keys), np.int64)
        has = counts > 0
        if has.any():
            longest[has] = np.maximum.reduceat(batch.lens, batch.bounds[:-1][has])
        first = self._starts.n + batch.bounds[:-1]
        new = {
            "slab": t[:, SLAB], "generation": t[:, GENERATION], "extent": t[:, EXTENT_OFFSET],
            "keys_row": byte_k // rb, "values_row": byte_v // rb,
            "keys_slab_row": t[:, KEYS_OFFSET] // rb,
            "row_bytes": rb, "head_dim": t[:, HEAD_DIM], "dtype": t[:, DTYPE], "clusters": counts,
            "first": first, "longest": longest,
            "aligned": ((byte_k % rb == 0) & (byte_v % rb == 0)).astype(np.int64),
            "header_word": (address + t[:, EXTENT_OFFSET] - EXTENT_HEADER) // 8,
        }  # fmt: skip
        for name, col in self._cols.items():
            col.extend(np.asarray(new[name], np.int64))
        self._starts.extend(batch.row_starts)
        self._lens.extend(batch.lens)
        for key in keys:
            self._index[key] = len(self._keys)
            self._keys.append(key)
        self.version += 1

    def drop(self, which: Callable[[HeadKey], bool]) -> None:
        for key in [k for k in self._index if which(k)]:
            self._keys[self._index.pop(key)] = None
            self.version += 1
        if len(self._keys) - len(self._index) > max(len(self._index), 1024):
            self.clear()  # mostly dead slots: start over (heads are re-described on use)

    def changed(
        self, keys: list[HeadKey], slab: np.ndarray, extent: np.ndarray, generation: np.ndarray
    ) -> set[HeadKey]:
        """Keys whose current extent (renewal reply) is not the cached one."""
        s = self.slots(keys)
        c = self._cols
        moved = (
            (c["slab"].values[s] != slab)
            | (c["extent"].values[s] != extent)
            | (c["generation"].values[s] != generation)
        )
        return {keys[i] for i in np.flatnonzero(moved).tolist()}

    def geometry(self, slots: np.ndarray) -> tuple[int, int, torch.dtype, int]:
        """(row_bytes, head_dim, dtype, longest cluster) shared by `slots`, or ResolveFallback."""
        c = self._cols
        picked = [c[n].values[slots] for n in ("row_bytes", "head_dim", "dtype")]
        if any((col != col[0]).any() for col in picked) or not c["aligned"].values[slots].all():
            raise ResolveFallback("rows of different geometries or unaligned slabs in one call")
        name = dtype_name(int(picked[2][0])) or ""
        longest = int(c["longest"].values[slots].max()) if slots.shape[0] else 0
        return int(picked[0][0]), int(picked[1][0]), torch_dtype(name), longest

    def extents(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slab, extent offset, generation) [E] of the slots (for the generation re-check)."""
        c = self._cols
        return c["slab"].values[slots], c["extent"].values[slots], c["generation"].values[slots]

    def device(self, device: torch.device) -> DeviceColumns:
        """The columns on `device` (built once per table version)."""
        got = self._on_device.get(str(device))
        if got is not None and got[0] == self.version:
            return got[1]
        columns = self._columns_on(device)
        self._on_device[str(device)] = (self.version, columns)
        return columns

    def _columns_on(self, device: torch.device) -> DeviceColumns:
        c = self._cols
        lookup = Columns(
            self._starts.on(device),
            self._lens.on(device),
            c["first"].on(device),
            c["clusters"].on(device),
            c["keys_row"].on(device),
            c["values_row"].on(device),
        )
        return DeviceColumns(lookup, c["header_word"].on(device), c["generation"].on(device))

    def cuda_source(self, row_bytes: int, device: torch.device) -> torch.Tensor:
        """A [1, W] int64 CUDA alias at the base address; registers every cached slab."""
        ready = (str(device), row_bytes, self.version)
        if ready == self._ready:
            return self._alias[(str(device), 0, row_bytes)]
        for slab in np.unique(self._cols["slab"].values).tolist():
            key = (str(device), int(slab), row_bytes)
            if key not in self._registered:
                self.arena.slab(int(slab)).cuda_rows(row_bytes, device)
                self._registered.add(key)
        key = (str(device), 0, row_bytes)
        if key not in self._registered:
            self.arena.slab(0).cuda_rows(row_bytes, device)
            self._registered.add(key)
        alias = self._alias.get(key)
        if alias is None:
            host = self.arena.slab(0).buf[:row_bytes].view(np.int64).reshape(1, -1)
            alias = torch.as_tensor(_CudaAlias(host, device), device=device)
            self._alias[key] = alias
        self._ready = ready
        return alias

    def gather_cpu(
        self, slots: np.ndarray, runs: RunTable, out: np.ndarray, row_bytes: int
    ) -> None:
        """The CPU gather: per slab one np.take of the runs' rows into `out` [2N, W] int64."""
        c = self._cols
        n = runs.src.shape[0] // (2 * max(slots.shape[0], 1))
        shift = (c["keys_row"].values - c["keys_slab_row"].values)[slots]  # [E] slab from base
        slab_of_run = np.tile(np.repeat(c["slab"].values[slots], n), 2)  # [2K]
        src = runs.src.numpy() - np.tile(np.repeat(shift, n), 2)  # rows from the slab start
        table = np.stack([src, runs.dst.numpy(), runs.lens.numpy()])  # [3, 2K]
        for slab in np.unique(slab_of_run[table[2] > 0]).tolist():
            src_rows, dst_rows = expand_runs(table[:, slab_of_run == slab])
            rows = self.arena.slab(int(slab)).rows(row_bytes)  # [R, W] words
            out[dst_rows] = np.take(rows, src_rows, axis=0).view(np.int64)

    def _base(self) -> int:
        return int(self.arena.slab(0).buf.ctypes.data)

    def _address(self, slab: int) -> int:
        return int(self.arena.slab(slab).buf.ctypes.data)
