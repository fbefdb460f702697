"""Host memory for cluster-major K/V: a shared-memory slab arena, or private heap memory.

`SharedArena` keeps K/V in slab files (default /dev/shm/wavekv-<pid>-<id>-<index>, 256 MiB each,
preallocated with posix_fallocate so a full tmpfs fails cleanly instead of with SIGBUS). A
first-fit allocator with coalescing free lists hands out extents inside the slabs, so memory
freed by a deleted sequence or a grown head is reused instead of growing the process. Every
extent is preceded by a 64-byte header (magic, generation): the generation is set on allocation
and zeroed on free, so a same-host reader can tell whether what it gathered was reused.

Leases: FetchDescriptors leases the extents it describes; `free` of a leased extent is deferred
until every lease on it is released or has expired (TTL), so a reader holding a lease never sees
its memory reused, and a crashed reader's leases expire.

`HeapArena` has the same interface over private numpy memory (shared memory off/unavailable).
Everything runs on the store's event-loop thread: no locking.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("kvstore_server.arena")

SLAB_MAGIC = int.from_bytes(b"WVKVSLAB", "little")
EXTENT_MAGIC = int.from_bytes(b"WVKVEXTN", "little")
SLAB_HEADER = 4096  # magic u64, arena id (32 ASCII hex bytes)
EXTENT_HEADER = 64  # magic u64, generation u64
SLAB_ROUND = 2 << 20  # oversized slabs are rounded up to 2 MiB
_STALE_RE = re.compile(r"^wavekv-(\d+)-[0-9a-f]+-\d+$")


@dataclass(slots=True, eq=False)
class Extent:
    """One allocation. `data` is a uint8 view of its bytes; slab -1 means private memory."""

    slab: int
    offset: int  # byte offset of the data in the slab
    block: tuple[int, int]  # (start, size) of the whole block, header and padding included
    generation: int
    data: np.ndarray  # [nbytes] uint8
    leases: int = 0
    pending_free: bool = False


@dataclass(slots=True)
class Slab:
    index: int
    path: Path
    size: int
    mem: mmap.mmap
    buf: np.ndarray  # [size] uint8 view of mem
    free: list[list[int]] = field(default_factory=list)  # sorted [start, size] blocks

    def fit(self, nbytes: int, align: int) -> tuple[int, int, int] | None:
        """First fit: (free-list index, block start, data offset) or None."""
        for i, (start, size) in enumerate(self.free):
            data = _round_up(start + EXTENT_HEADER, align)
            if data + nbytes <= start + size:
                return i, start, data
        return None

    def carve(self, i: int, start: int, end: int) -> None:
        """Remove [start, end) from free block i (start is the block's start)."""
        block_start, size = self.free[i]
        rest = block_start + size - end
        if rest > 0:
            self.free[i] = [end, rest]
        else:
            del self.free[i]

    def release(self, start: int, size: int) -> None:
        """Return [start, start + size) to the free list, merging neighbours."""
        blocks = self.free
        lo = 0
        while lo < len(blocks) and blocks[lo][0] < start:
            lo += 1
        blocks.insert(lo, [start, size])
        if lo + 1 < len(blocks) and blocks[lo][0] + blocks[lo][1] == blocks[lo + 1][0]:
            blocks[lo][1] += blocks.pop(lo + 1)[1]
        if lo > 0 and blocks[lo - 1][0] + blocks[lo - 1][1] == blocks[lo][0]:
            blocks[lo - 1][1] += blocks.pop(lo)[1]

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self.free)


class HeapArena:
    """Private memory with the arena interface (no sharing, no leases needed)."""

    shared = False
    arena_id = ""

    def alloc(self, nbytes: int, align: int) -> Extent:
        del align  # numpy allocations are 64-byte aligned; the heap path never views rows by slab
        return Extent(-1, 0, (0, nbytes), 0, np.empty(nbytes, np.uint8))

    def free(self, extent: Extent) -> None:
        del extent  # garbage collected

    def close(self) -> None:
        return None


class SharedArena:
    """Slab files in `directory`; see the module docstring."""

    shared = True

    def __init__(
        self,
        directory: str | Path = "/dev/shm",
        slab_bytes: int = 256 << 20,
        max_lease_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slab_bytes < SLAB_ROUND:
            raise ValueError(f"slab_bytes={slab_bytes} must be >= {SLAB_ROUND}")
        if max_lease_ttl_s <= 0:
            raise ValueError(f"max_lease_ttl_s={max_lease_ttl_s} must be > 0")
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise OSError(f"shared-memory directory {str(self.directory)!r} does not exist")
        self.slab_bytes = slab_bytes
        self.max_lease_ttl_s = max_lease_ttl_s
        self.clock = clock
        self.arena_id = secrets.token_hex(16)
        self.file_prefix = f"wavekv-{os.getpid()}-{self.arena_id[:12]}-"
        self.slabs: list[Slab] = []
        self._generation = 0
        self._leases: dict[int, tuple[float, list[Extent]]] = {}
        remove_stale_slabs(self.directory)
        self._new_slab(slab_bytes)  # fail now (not on the first put) if shm is unusable

    def alloc(self, nbytes: int, align: int) -> Extent:
        """An extent of nbytes whose data offset is a multiple of `align` (itself a multiple
        of 64). Raises OSError when no slab can be created (tmpfs full)."""
        self.expire()
        align = math.lcm(64, align)
        for slab in self.slabs:
            found = slab.fit(nbytes, align)
            if found is not None:
                return self._take(slab, *found, nbytes)
        want = _round_up(SLAB_HEADER + EXTENT_HEADER + align + nbytes, SLAB_ROUND)
        slab = self._new_slab(max(self.slab_bytes, want))
        found = slab.fit(nbytes, align)
        assert found is not None
        return self._take(slab, *found, nbytes)

    def _take(self, slab: Slab, i: int, start: int, data: int, nbytes: int) -> Extent:
        end = _round_up(data + nbytes, 64)
        slab.carve(i, start, end)
        self._generation += 1
        header = slab.buf[data - EXTENT_HEADER : data].view(np.uint64)
        header[0], header[1] = EXTENT_MAGIC, self._generation
        view = slab.buf[data : data + nbytes]
        return Extent(slab.index, data, (start, end - start), self._generation, view)

    def free(self, extent: Extent) -> None:
        """Free now, or when the last lease on it ends."""
        if extent.leases > 0:
            extent.pending_free = True
            return
        self._release(extent)

    def _release(self, extent: Extent) -> None:
        slab = self.slabs[extent.slab]
        slab.buf[extent.offset - EXTENT_HEADER : extent.offset].view(np.uint64)[1] = 0
        extent.generation, extent.pending_free = 0, False
        slab.release(*extent.block)

    def lease(self, extents: list[Extent], ttl_s: float) -> tuple[int, float]:
        """Pin extents for ttl_s (capped at max_lease_ttl_s); returns (lease id, granted ttl)."""
        self.expire()
        ttl = min(ttl_s, self.max_lease_ttl_s) if ttl_s > 0 else self.max_lease_ttl_s / 6
        lease_id = secrets.randbits(63)
        for e in extents:
            e.leases += 1
        self._leases[lease_id] = (self.clock() + ttl, extents)
        return lease_id, ttl

    def release_leases(self, lease_ids: list[int]) -> int:
        released = 0
        for lease_id in lease_ids:
            held = self._leases.pop(lease_id, None)
            if held is not None:
                self._unpin(held[1])
                released += 1
        return released

    def expire(self) -> int:
        """Release every lease whose TTL has passed (a crashed reader's leases end here)."""
        now = self.clock()
        dead = [lid for lid, (deadline, _) in self._leases.items() if deadline <= now]
        for lid in dead:
            self._unpin(self._leases.pop(lid)[1])
        if dead:
            log.info("leases expired", extra={"count": len(dead)})
        return len(dead)

    def _unpin(self, extents: list[Extent]) -> None:
        for e in extents:
            e.leases -= 1
            if e.leases == 0 and e.pending_free:
                self._release(e)

    @property
    def num_leases(self) -> int:
        return len(self._leases)

    def slab_path(self, index: int) -> Path:
        return self.directory / f"{self.file_prefix}{index}"

    def _new_slab(self, size: int) -> Slab:
        index = len(self.slabs)
        path = self.slab_path(index)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # ENOSPC here, not SIGBUS on first write
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        buf = np.frombuffer(mem, np.uint8)  # [size]
        buf[:8].view(np.uint64)[0] = SLAB_MAGIC
        buf[8:40] = np.frombuffer(self.arena_id.encode(), np.uint8)
        slab = Slab(index, path, size, mem, buf, [[SLAB_HEADER, size - SLAB_HEADER]])
        self.slabs.append(slab)
        log.info("slab created", extra={"path": str(path), "bytes": size})
        return slab

    def close(self) -> None:
        """Unlink the slab files (mappings held by readers stay valid until they unmap)."""
        for slab in self.slabs:
            slab.path.unlink(missing_ok=True)
        self.slabs.clear()
        self._leases.clear()


def remove_stale_slabs(directory: Path) -> int:
    """Unlink slab files left by store processes that no longer exist (crashes)."""
    removed = 0
    for path in directory.glob("wavekv-*"):
        m = _STALE_RE.match(path.name)
        if m is None or _alive(int(m.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_arena(mode: str, directory: str, slab_bytes: int, max_lease_ttl_s: float):  # type: ignore[no-untyped-def]
    """mode "off" -> HeapArena; "auto" -> SharedArena, else HeapArena with a warning;
    "require" -> SharedArena or the OSError."""
    if mode == "off":
        return HeapArena()
    try:
        return SharedArena(directory, slab_bytes, max_lease_ttl_s)
    except OSError as exc:
        if mode == "require":
            raise
        log.warning("shared memory unavailable, K/V stays private", extra={"error": str(exc)})
        return HeapArena()


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple
