"""Same-host zero-copy reads of the store's shared-memory arena.

`ArenaReader` maps the store's slab files read-only (checking each slab's magic and arena id, so
a remote store or a different /dev/shm is detected and the caller falls back to streaming), and
gathers the rows that FetchDescriptors describes:
- CPU: one vectorised `np.take` per slab over the slab viewed as rows of machine words;
- CUDA: the slab is registered as pinned, mapped memory (cudaHostRegister, read-only) and viewed
  as a CUDA tensor through unified addressing, so `index_select` on the GPU reads the rows
  straight over PCIe into the execution buffer (no staging copy, no cudaMemcpy per cluster).
After gathering, `verify` re-reads every extent's generation word; a mismatch means the memory
was freed or reused (lease expired) and the gathered data must be discarded.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client import gather_kernel
from wavekv_proto.codec import decode_numpy, dtype_name, torch_dtype
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

log = logging.getLogger("client.shm")

SLAB_MAGIC = int.from_bytes(b"WVKVSLAB", "little")
EXTENT_MAGIC = int.from_bytes(b"WVKVEXTN", "little")
EXTENT_HEADER = 64
CUDA_HOST_REGISTER_PORTABLE = 1
CUDA_HOST_REGISTER_MAPPED = 2
CUDA_HOST_REGISTER_READ_ONLY = 8


class SharedMemoryUnavailable(RuntimeError):
    """The arena cannot be used from here (remote store, other /dev/shm, shm off)."""


class StaleDescriptorError(RuntimeError):
    """Gathered memory was freed or reused (generation mismatch): discard and refetch."""


class BadDescriptorError(ValueError):
    """A descriptor points outside its slab or names an unknown slab."""


@dataclass(slots=True)
class Described:
    """One entry of a FetchDescriptors reply, decoded."""

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
    lease_id: int
    lease_ttl_s: float
    entries: list[Described]


class _MappedSlab:
    def __init__(self, path: Path, arena_id: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self.mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self.size = size
        self.buf = np.frombuffer(self.mem, np.uint8)  # [size] read-only
        magic = int(self.buf[:8].view(np.uint64)[0])
        found = bytes(self.buf[8:40]).decode(errors="replace")
        if magic != SLAB_MAGIC or found != arena_id:
            raise SharedMemoryUnavailable(
                f"{path}: not this store's slab (magic {magic:#x}, arena {found!r} != {arena_id!r})"
            )
        self._rows: dict[int, np.ndarray] = {}
        self._cuda: dict[tuple[int, str], torch.Tensor] = {}
        self._registered = False

    def rows(self, row_bytes: int) -> np.ndarray:  # [size // row_bytes, words] read-only
        view = self._rows.get(row_bytes)
        if view is None:
            word = _word_dtype(row_bytes)
            n = self.size // row_bytes
            view = self.buf[: n * row_bytes].view(word).reshape(n, -1)
            self._rows[row_bytes] = view
        return view

    def cuda_rows(self, row_bytes: int, device: torch.device) -> torch.Tensor:
        """The slab as a CUDA tensor [rows, words] aliasing pinned host memory (zero-copy)."""
        key = (row_bytes, str(device))
        view = self._cuda.get(key)
        if view is None:
            self._register()
            host = self.rows(row_bytes)
            view = torch.as_tensor(_CudaAlias(host, device), device=device)
            self._cuda[key] = view
        return view

    def _register(self) -> None:
        if self._registered:
            return
        flags = CUDA_HOST_REGISTER_PORTABLE | CUDA_HOST_REGISTER_MAPPED
        err = torch.cuda.cudart().cudaHostRegister(
            self.buf.ctypes.data, self.size, flags | CUDA_HOST_REGISTER_READ_ONLY
        )
        if int(err) != 0:
            torch.cuda.cudart().cudaGetLastError()  # clear it: it would poison later CUDA calls
            raise SharedMemoryUnavailable(f"cudaHostRegister failed with error {int(err)}")
        self._registered = True

    def __del__(self) -> None:
        """Unregister before the mapping goes: a later mmap may reuse the address range."""
        if getattr(self, "_registered", False):
            self._cuda.clear()
            torch.cuda.cudart().cudaHostUnregister(self.buf.ctypes.data)
            self._registered = False

    def generation(self, extent_offset: int) -> int:
        head = self.buf[extent_offset - EXTENT_HEADER : extent_offset].view(np.uint64)
        return int(head[1]) if int(head[0]) == EXTENT_MAGIC else -1


class _CudaAlias:
    """__cuda_array_interface__ over registered host memory (UVA: same pointer on the device)."""

    def __init__(self, host: np.ndarray, device: torch.device) -> None:
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": host.shape,
            "typestr": np.dtype(_signed(host.dtype)).str,
            "data": (host.ctypes.data, False),  # registered read-only; never written
            "version": 3,
            "strides": None,
        }


class ArenaReader:
    """Maps one store's slabs lazily; gathers described rows on CPU or CUDA."""

    def __init__(self, info: pb.ArenaInfo) -> None:
        if not info.enabled:
            raise SharedMemoryUnavailable("the store keeps K/V in private memory")
        self.arena_id = info.arena_id
        self.directory = Path(info.directory)
        self.file_prefix = info.file_prefix
        self._slabs: dict[int, _MappedSlab] = {}
        self.slab(0)  # raises SharedMemoryUnavailable when the store is not on this host

    def slab(self, index: int) -> _MappedSlab:
        slab = self._slabs.get(index)
        if slab is None:
            path = self.directory / f"{self.file_prefix}{index}"
            try:
                slab = _MappedSlab(path, self.arena_id)
            except OSError as exc:
                raise SharedMemoryUnavailable(f"cannot map {path}: {exc}") from exc
            self._slabs[index] = slab
        return slab

    def decode(self, msg: pb.FetchDescriptorsResponse) -> DescriptorBatch:
        """Decode and bounds-check a reply (BadDescriptorError names the field)."""
        if msg.arena_id != self.arena_id:
            raise StaleDescriptorError(f"arena_id={msg.arena_id!r}, mapped {self.arena_id!r}")
        return DescriptorBatch(
            msg.lease_id, msg.lease_ttl_s, [self._entry(i, e) for i, e in enumerate(msg.entries)]
        )

    def _entry(self, i: int, e: Any) -> Described:
        where = f"entries[{i}]"
        starts, _ = decode_numpy(e.row_starts)
        offsets, _ = decode_numpy(e.cluster_offsets)
        name = dtype_name(e.dtype)
        if name is None or e.row_bytes == 0:
            raise BadDescriptorError(f"{where}: dtype={e.dtype} row_bytes={e.row_bytes}")
        if offsets.shape != (starts.shape[0] + 1,) or (offsets.shape[0] and offsets[0] != 0):
            raise BadDescriptorError(f"{where}.cluster_offsets shape={list(offsets.shape)}")
        d = Described(
            e.slab,
            e.generation,
            e.extent_offset,
            e.keys_offset // e.row_bytes,
            e.values_offset // e.row_bytes,
            e.row_bytes,
            torch_dtype(name),
            e.head_dim,
            starts.astype(np.int64, copy=False),
            offsets.astype(np.int64, copy=False),
        )
        if d.num_rows:
            self._check_bounds(where, d, e)
        return d

    def _check_bounds(self, where: str, d: Described, e: Any) -> None:
        slab = self.slab(d.slab)
        lens = np.diff(d.cluster_offsets)
        if (lens < 0).any() or (d.row_starts < 0).any():
            raise BadDescriptorError(f"{where}: negative row_starts or cluster lengths")
        if e.keys_offset % e.row_bytes or e.values_offset % e.row_bytes:
            raise BadDescriptorError(f"{where}: offsets not multiples of row_bytes={e.row_bytes}")
        last = int((d.row_starts + lens).max())
        for name, base in (("keys_offset", e.keys_offset), ("values_offset", e.values_offset)):
            end = base + last * d.row_bytes
            if base < e.extent_offset or end > slab.size:
                raise BadDescriptorError(
                    f"{where}.{name}={base}: rows end at byte {end}, slab {d.slab} has {slab.size}"
                )
        if not EXTENT_HEADER <= e.extent_offset <= slab.size:
            raise BadDescriptorError(f"{where}.extent_offset={e.extent_offset} outside the slab")

    def verify(self, batch: DescriptorBatch) -> None:
        """Raise StaleDescriptorError if any described extent was freed or reused."""
        for i, d in enumerate(batch.entries):
            if d.num_rows == 0:
                continue
            now = self.slab(d.slab).generation(d.extent_offset)
            if now != d.generation:
                raise StaleDescriptorError(
                    f"entries[{i}]: extent generation {now} != described {d.generation} "
                    f"(memory freed or reused; lease expired?)"
                )

    def gather_cpu(self, d: Described) -> tuple[torch.Tensor, torch.Tensor]:
        """One entry's keys, values [M, D] as new CPU tensors."""
        rows = d.rows()  # [M]
        src = self.slab(d.slab).rows(d.row_bytes)  # [R, W]
        keys = np.take(src, rows + d.keys_row, axis=0)  # [M, W]
        values = np.take(src, rows + d.values_row, axis=0)
        return _typed(keys, d), _typed(values, d)

    def gather_packed(
        self,
        batch: DescriptorBatch,
        slots: list[int],  # output row (b * Hkv + h) of each entry
        out_rows: int,
        max_tokens: int,
        device: torch.device,
        method: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All entries into keys, values [out_rows, max_tokens, D] on `device` (zero padded).

        method (CUDA): "auto" (Triton run gather if available, else index_select), "triton",
        "index_select" (both read pinned host memory from the GPU), or "host" (gather on the CPU,
        then one copy); on CPU always a numpy gather."""
        if method not in GATHER_METHODS:
            raise ValueError(f"method={method!r} is not one of {GATHER_METHODS}")
        first = batch.entries[0]
        w = first.row_bytes // _word_dtype(first.row_bytes).itemsize
        kv = torch.zeros(2, out_rows * max_tokens, w, dtype=_torch_word(first), device=device)
        for index, runs in self._runs(batch, slots, max_tokens, kv.shape[1]).items():
            self._gather_slab(index, first.row_bytes, runs, kv.view(-1, w), device, method)
        kv = kv.view(first.dtype).view(2, out_rows, max_tokens, first.head_dim)
        return kv[0], kv[1]

    @staticmethod
    def _runs(
        batch: DescriptorBatch, slots: list[int], max_tokens: int, half: int
    ) -> dict[int, np.ndarray]:
        """Per slab: [3, K] int64 (source row, destination row, length) of every cluster run,
        keys then values (value destinations start at `half`)."""
        by_slab: dict[int, list[np.ndarray]] = {}
        for d, slot in zip(batch.entries, slots, strict=True):
            if d.num_rows == 0:
                continue
            if d.num_rows > max_tokens:
                raise ValueError(f"fetched {d.num_rows} tokens for row {slot} > {max_tokens}")
            lens = np.diff(d.cluster_offsets)
            dst = d.cluster_offsets[:-1] + slot * max_tokens
            part = np.stack(
                [
                    np.concatenate([d.row_starts + d.keys_row, d.row_starts + d.values_row]),
                    np.concatenate([dst, dst + half]),
                    np.concatenate([lens, lens]),
                ]
            )
            by_slab.setdefault(d.slab, []).append(part)
        return {k: np.concatenate(v, axis=1) for k, v in by_slab.items()}

    def _gather_slab(
        self,
        index: int,
        row_bytes: int,
        runs: np.ndarray,  # [3, K] (source row, destination row, length)
        flat: torch.Tensor,  # [2 * rows * max_tokens, W] words
        device: torch.device,
        method: str,
    ) -> None:
        slab = self.slab(index)
        words = flat.shape[1]
        if device.type == "cuda" and method != "host":
            try:
                src = slab.cuda_rows(row_bytes, device)  # aliases pinned host memory
            except SharedMemoryUnavailable as exc:
                log.warning("GPU cannot read the arena (%s); gathering on the host", exc)
                method = "host"
            else:
                use_triton = method == "triton" or (
                    method == "auto" and gather_kernel.available(words)
                )
                if use_triton:
                    table = torch.from_numpy(runs).pin_memory().to(device, non_blocking=True)
                    gather_kernel.gather_runs(src, flat, table[0], table[1], table[2])
                    return
                src_rows, dst_rows = _expand(runs)
                idx = torch.from_numpy(np.stack([src_rows, dst_rows])).to(device)
                flat.index_copy_(0, idx[1], src.index_select(0, idx[0]))
                return
        src_rows, dst_rows = _expand(runs)
        got = np.take(slab.rows(row_bytes), src_rows, axis=0)  # [M, W]
        got_t = torch.from_numpy(got.view(_signed(got.dtype)))
        if device.type == "cuda":
            flat.index_copy_(0, torch.from_numpy(dst_rows).to(device), got_t.to(device))
        else:
            flat.numpy()[dst_rows] = got_t.numpy()


GATHER_METHODS = ("auto", "triton", "index_select", "host")


def _expand(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[3, K] runs -> (source rows [M], destination rows [M])."""
    src, dst, lens = runs
    total = int(lens.sum())
    step = np.arange(total, dtype=np.int64)
    cum = np.zeros(lens.shape[0] + 1, np.int64)
    np.cumsum(lens, out=cum[1:])
    within = step - np.repeat(cum[:-1], lens)
    return np.repeat(src, lens) + within, np.repeat(dst, lens) + within


def _typed(words: np.ndarray, d: Described) -> torch.Tensor:
    if words.shape[0] == 0:
        return torch.empty(0, d.head_dim, dtype=d.dtype)
    t = torch.from_numpy(words.view(_signed(words.dtype)))  # [M, W]
    return t.view(d.dtype).reshape(-1, d.head_dim)


def _word_dtype(row_bytes: int) -> np.dtype:
    for dt in (np.uint64, np.uint32, np.uint16):
        if row_bytes % np.dtype(dt).itemsize == 0:
            return np.dtype(dt)
    return np.dtype(np.uint8)


def _signed(dt: np.dtype) -> np.dtype:
    names = {8: np.int64, 4: np.int32, 2: np.int16}
    return np.dtype(names.get(dt.itemsize, np.uint8))


def _torch_word(d: Described) -> torch.dtype:
    size = _word_dtype(d.row_bytes).itemsize
    return {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[size]
