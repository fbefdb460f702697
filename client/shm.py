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
from pathlib import Path

import numpy as np
import torch

from client import gather_kernel
from client.descriptors import (
    DTYPE,
    EXTENT_HEADER,
    EXTENT_OFFSET,
    GENERATION,
    HEAD_DIM,
    ROW_BYTES,
    SLAB,
    Described,
    DescriptorBatch,
    StaleDescriptorError,
    decode_reply,
)
from client.errors import SharedMemoryUnavailable
from client.runs import expand_runs, merge_runs
from client.runs import runs as runs_by_slab
from client.staging import PinnedStager
from wavekv_proto.codec import dtype_name, torch_dtype
from wavekv_proto.layout import ARENA_ID_BYTES, ARENA_ID_OFFSET, EXTENT_MAGIC, SLAB_MAGIC
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

log = logging.getLogger("client.shm")

CUDA_HOST_REGISTER_PORTABLE = 1
CUDA_HOST_REGISTER_MAPPED = 2
CUDA_HOST_REGISTER_READ_ONLY = 8


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
        found = bytes(self.buf[ARENA_ID_OFFSET : ARENA_ID_OFFSET + ARENA_ID_BYTES]).decode(
            errors="replace"
        )
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

    def __init__(self, host: np.ndarray, device: torch.device, address: int | None = None) -> None:
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": host.shape,
            "typestr": np.dtype(_signed(host.dtype)).str,
            "data": (host.ctypes.data if address is None else address, False),  # read-only
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
        self._stager = PinnedStager()
        self._aliases: dict[tuple[int, int, str], torch.Tensor] = {}
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
        return decode_reply(msg, lambda index: self.slab(index).size)

    def verify(self, batch: DescriptorBatch) -> None:
        """Wait for this reader's pending GPU gather, then raise StaleDescriptorError if any
        described extent was freed or reused meanwhile."""
        self._stager.wait()
        t = batch.table
        for i in np.flatnonzero(batch.entry_rows() > 0).tolist():
            now = self.slab(int(t[i, SLAB])).generation(int(t[i, EXTENT_OFFSET]))
            if now != int(t[i, GENERATION]):
                raise StaleDescriptorError(
                    f"entries[{i}]: extent generation {now} != described {int(t[i, GENERATION])} "
                    f"(memory freed or reused; lease expired?)"
                )

    def verify_generations(
        self,
        slabs: np.ndarray,  # [E]
        extent_offsets: np.ndarray,  # [E]
        generations: np.ndarray,  # [E]
    ) -> None:
        """Like `verify` for described extents given as columns (one numpy gather per slab)."""
        self._stager.wait()
        for index in np.unique(slabs).tolist():
            pick = np.flatnonzero(slabs == index)
            words = self.slab(int(index)).buf.view(np.uint64)  # [size / 8]
            at = (extent_offsets[pick] - EXTENT_HEADER) // 8  # magic word; generation follows
            now = np.where(words[at] == EXTENT_MAGIC, words[at + 1].astype(np.int64), -1)
            bad = np.flatnonzero(now != generations[pick])
            if bad.shape[0]:
                i = int(pick[bad[0]])
                raise StaleDescriptorError(
                    f"slab {index} extent at {int(extent_offsets[i])}: generation "
                    f"{int(now[bad[0]])} != cached {int(generations[i])} (memory freed or reused)"
                )

    def mark_done(self, device: torch.device) -> None:
        """The gather reading what was staged has been enqueued (see PinnedStager.done)."""
        if device.type == "cuda":
            self._stager.done(device)

    def to_device(self, array: np.ndarray, device: torch.device) -> torch.Tensor:
        """A small host array on `device`: staged through one reused pinned buffer and copied
        without blocking on CUDA (ordered before this reader's next gather)."""
        if device.type != "cuda":
            return torch.from_numpy(array)
        return self._stager.put(array, device)

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
        "index_select" (both read pinned host memory from the GPU), "memcpy" (one copy per run
        of adjacent clusters, the copy engine reading host memory), or "host" (gather on the
        CPU, then one copy); on CPU always a numpy gather. Call `verify` afterwards: it waits
        for the GPU reads and checks that the memory was not reused meanwhile."""
        if method not in GATHER_METHODS:
            raise ValueError(f"method={method!r} is not one of {GATHER_METHODS}")
        row_bytes, head_dim, code = (int(x) for x in batch.table[0, [ROW_BYTES, HEAD_DIM, DTYPE]])
        dtype = torch_dtype(dtype_name(code) or "")
        w = row_bytes // _word_dtype(row_bytes).itemsize
        kv = torch.zeros(2, out_rows * max_tokens, w, dtype=_torch_word(row_bytes), device=device)
        flat = kv.view(-1, w)
        slot_array = np.asarray(slots, np.int64)  # [E]
        one_launch = device.type == "cuda" and (
            method == "triton" or (method == "auto" and gather_kernel.available(w))
        )
        if not (one_launch and self._triton_all(batch, slot_array, max_tokens, flat, device)):
            for index, runs in runs_by_slab(batch, slot_array, max_tokens, kv.shape[1]):
                self._gather_slab(index, row_bytes, runs, flat, device, method)
        if device.type == "cuda":
            self._stager.done(device)  # `verify` and the next staging wait for this point
        kv = kv.view(dtype).view(2, out_rows, max_tokens, head_dim)
        return kv[0], kv[1]

    def _triton_all(
        self,
        batch: DescriptorBatch,
        slots: np.ndarray,  # [E]
        max_tokens: int,
        flat: torch.Tensor,  # [N, W] device words
        device: torch.device,
    ) -> bool:
        """Every slab's runs in ONE kernel launch; False if that cannot be done."""
        plan = self.triton_plan(batch, slots, max_tokens, flat.shape[0] // 2, device)
        if plan is None:
            return False
        src, table_np = plan
        if table_np.shape[1]:
            table = self._stager.put(table_np, device)  # [3, 2K]
            lens = table_np[2]
            gather_kernel.gather_runs(src, flat, table[0], table[1], table[2], int(lens.max()))
        return True

    def triton_plan(
        self,
        batch: DescriptorBatch,
        slots: np.ndarray,  # [E]
        max_tokens: int,
        half: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, np.ndarray] | None:
        """(source alias, [3, 2K] run table) of one launch over every slab: source rows are
        counted from the lowest slab address (UVA pointers are host pointers); None if the
        slabs cannot be read from the GPU or are not row-aligned to each other."""
        t = batch.table
        row_bytes = int(t[0, ROW_BYTES])
        used = np.unique(t[batch.entry_rows() > 0, SLAB]).tolist()
        if not used:
            first = self.slab(0)
            alias = self._base_alias(first, first.buf.ctypes.data, row_bytes, device)
            return alias, np.zeros((3, 0), np.int64)
        try:
            slabs = [self.slab(index) for index in used]
            for slab in slabs:
                slab.cuda_rows(row_bytes, device)  # registers the slab
        except SharedMemoryUnavailable as exc:
            log.warning("GPU cannot read the arena (%s); gathering on the host", exc)
            return None
        addresses = np.array([slab.buf.ctypes.data for slab in slabs], np.int64)  # [S]
        base = int(addresses.min())
        if ((addresses - base) % row_bytes).any():
            return None
        shift = np.zeros(int(max(used)) + 1, np.int64)  # slab -> rows from the base
        shift[used] = (addresses - base) // row_bytes
        entry_shift = shift[np.minimum(t[:, SLAB], shift.shape[0] - 1)]  # [E]
        ((_, table_np),) = runs_by_slab(batch, slots, max_tokens, half, entry_shift)
        src = self._base_alias(slabs[int(addresses.argmin())], base, row_bytes, device)
        return src, table_np

    def _base_alias(
        self, slab: _MappedSlab, base: int, row_bytes: int, device: torch.device
    ) -> torch.Tensor:
        """A [1, W] CUDA tensor at `base` (only its pointer is used by the kernel)."""
        key = (base, row_bytes, str(device))
        alias = self._aliases.get(key)
        if alias is None:
            host = slab.rows(row_bytes)[:1]
            alias = torch.as_tensor(_CudaAlias(host, device, base), device=device)
            self._aliases[key] = alias
        return alias

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
        if device.type == "cuda" and method != "host":
            try:
                src = slab.cuda_rows(row_bytes, device)  # aliases pinned host memory
            except SharedMemoryUnavailable as exc:
                log.warning("GPU cannot read the arena (%s); gathering on the host", exc)
                method = "host"
            else:
                self._gather_device(src, runs, flat, device, method)
                return
        src_rows, dst_rows = expand_runs(runs)
        got = np.take(slab.rows(row_bytes), src_rows, axis=0)  # [M, W]
        got_t = torch.from_numpy(got.view(_signed(got.dtype)))
        if device.type == "cuda":
            flat.index_copy_(0, torch.from_numpy(dst_rows).to(device), got_t.to(device))
        else:
            flat.numpy()[dst_rows] = got_t.numpy()

    def _gather_device(
        self,
        src: torch.Tensor,  # [R, W] words aliasing registered host memory
        runs: np.ndarray,  # [3, K]
        flat: torch.Tensor,  # [N, W] device words
        device: torch.device,
        method: str,
    ) -> None:
        if method == "triton" or (method == "auto" and gather_kernel.available(flat.shape[1])):
            table = self._stager.put(runs, device)  # [3, K]
            lens = runs[2]
            gather_kernel.gather_runs(src, flat, table[0], table[1], table[2], int(lens.max()))
        elif method == "memcpy":  # one copy engine transfer per run of adjacent clusters
            for s, d, n in merge_runs(runs).T.tolist():
                flat[d : d + n].copy_(src[s : s + n], non_blocking=True)
        else:
            src_rows, dst_rows = expand_runs(runs)
            idx = self._stager.put(np.stack([src_rows, dst_rows]), device)  # [2, M]
            flat.index_copy_(0, idx[1], src.index_select(0, idx[0]))


GATHER_METHODS = ("auto", "triton", "index_select", "memcpy", "host")
_expand = expand_runs  # the name the tests import


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


def _torch_word(row_bytes: int) -> torch.dtype:
    size = _word_dtype(row_bytes).itemsize
    return {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[size]
