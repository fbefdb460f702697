"""One slab file of a shared-memory arena: a sparse file mapped once, carved into extents.

Memory is committed per extent, not per slab: the file is created sparse (ftruncate), `commit`
reserves the pages of a new extent with posix_fallocate (a full tmpfs fails there with ENOSPC
instead of SIGBUS on the first write), and `release` zeroes the freed bytes and punches the freed
pages out of the file (MADV_REMOVE), so they go back to the OS and read as zeros until reused.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wavekv_proto.layout import ARENA_ID_BYTES, ARENA_ID_OFFSET, SLAB_HEADER_BYTES, SLAB_MAGIC

PAGE = mmap.PAGESIZE
Fallocate = Callable[[int, int, int], None]  # (fd, offset, length), os.posix_fallocate's shape


@dataclass(slots=True, eq=False)
class Slab:
    index: int
    path: Path
    size: int
    mem: mmap.mmap
    buf: np.ndarray  # [size] uint8 view of mem
    free: list[list[int]] = field(default_factory=list)  # sorted [start, size] blocks

    @classmethod
    def create(cls, index: int, path: Path, size: int, arena_id: str, fallocate: Fallocate) -> Slab:
        """A new sparse slab file with its header written; OSError (ENOSPC...) leaves no file."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            fallocate(fd, 0, SLAB_HEADER_BYTES)
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        buf = np.frombuffer(mem, np.uint8)  # [size]
        buf[:8].view(np.uint64)[0] = SLAB_MAGIC
        buf[ARENA_ID_OFFSET : ARENA_ID_OFFSET + ARENA_ID_BYTES] = np.frombuffer(
            arena_id.encode(), np.uint8
        )
        return cls(index, path, size, mem, buf, [[SLAB_HEADER_BYTES, size - SLAB_HEADER_BYTES]])

    @classmethod
    def attach(cls, index: int, path: Path) -> Slab:
        """Map an existing slab file (warm restart); every byte after the header starts free."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        buf = np.frombuffer(mem, np.uint8)
        return cls(index, path, size, mem, buf, [[SLAB_HEADER_BYTES, size - SLAB_HEADER_BYTES]])

    def arena_id(self) -> str:
        """The arena id in the header ('' if the magic is wrong)."""
        if int(self.buf[:8].view(np.uint64)[0]) != SLAB_MAGIC:
            return ""
        raw = bytes(self.buf[ARENA_ID_OFFSET : ARENA_ID_OFFSET + ARENA_ID_BYTES])
        return raw.decode(errors="replace")

    def fit(self, nbytes: int, align: int, header: int) -> tuple[int, int, int] | None:
        """First fit: (free-list index, block start, data offset) or None."""
        for i, (start, size) in enumerate(self.free):
            data = _round_up(start + header, align)
            if data + nbytes <= start + size:
                return i, start, data
        return None

    def commit(self, start: int, end: int, fallocate: Fallocate) -> None:
        """Reserve the pages under [start, end) (OSError such as ENOSPC if the tmpfs is full)."""
        lo, hi = start // PAGE * PAGE, _round_up(end, PAGE)
        fd = os.open(self.path, os.O_RDWR)
        try:
            fallocate(fd, lo, hi - lo)
        finally:
            os.close(fd)

    def carve(self, i: int, start: int, end: int) -> None:
        """Remove [start, end) from free block i (start is the block's start)."""
        block_start, size = self.free[i]
        rest = block_start + size - end
        if rest > 0:
            self.free[i] = [end, rest]
        else:
            del self.free[i]

    def take(self, start: int, end: int) -> None:
        """Remove [start, end) from whatever free block holds it (warm restart)."""
        for i, (fs, size) in enumerate(self.free):
            if fs <= start and end <= fs + size:
                del self.free[i]
                if end < fs + size:
                    self.free.insert(i, [end, fs + size - end])
                if fs < start:
                    self.free.insert(i, [fs, start - fs])
                return
        raise ValueError(f"slab {self.index}: [{start}, {end}) is not free")

    def release(self, start: int, size: int) -> None:
        """Return [start, start + size) to the free list (merging neighbours), zeroed, with its
        whole pages given back to the OS."""
        blocks = self.free
        lo = 0
        while lo < len(blocks) and blocks[lo][0] < start:
            lo += 1
        blocks.insert(lo, [start, size])
        if lo + 1 < len(blocks) and blocks[lo][0] + blocks[lo][1] == blocks[lo + 1][0]:
            blocks[lo][1] += blocks.pop(lo + 1)[1]
        if lo > 0 and blocks[lo - 1][0] + blocks[lo - 1][1] == blocks[lo][0]:
            blocks[lo - 1][1] += blocks.pop(lo)[1]
            lo -= 1
        self.wipe(start, start + size, blocks[lo][0], blocks[lo][0] + blocks[lo][1])

    def wipe(self, start: int, end: int, free_start: int, free_end: int) -> None:
        """Zero [start, end) inside the free block [free_start, free_end): pages wholly inside
        the block are punched out (freed and zero); the bytes on pages shared with live
        neighbours are zeroed in place."""
        lo = max(_round_up(free_start, PAGE), start // PAGE * PAGE)
        hi = min(free_end // PAGE * PAGE, _round_up(end, PAGE))
        if hi > lo:
            self.mem.madvise(mmap.MADV_REMOVE, lo, hi - lo)
            self.buf[start : max(start, lo)] = 0
            self.buf[min(end, hi) : end] = 0
        else:
            self.buf[start:end] = 0

    @property
    def empty(self) -> bool:
        return self.free == [[SLAB_HEADER_BYTES, self.size - SLAB_HEADER_BYTES]]

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self.free)


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple
