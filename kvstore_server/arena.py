"""Host memory for cluster-major K/V: one shared-memory arena per namespace, or private memory.

`SharedArena` keeps one namespace's K/V in slab files `<directory>/<file_prefix><index>`. Slab 0
holds only the header (arena id): a reader maps it to check it sees this store's arena (it is
removed while the arena holds nothing, and made again when needed). Data
slabs (index >= 1, never reused) are sparse files created when needed and removed when empty; a
first-fit allocator with coalescing free lists hands out extents inside them, so memory freed by
a deleted sequence or a grown head is reused. Each extent's pages are committed when it is
allocated (ENOSPC then, not SIGBUS later) and zeroed and returned to the OS when it is freed
(kvstore_server.slab). Every extent is preceded by a 64-byte header (magic, generation): the
generation is set on allocation and wiped on free, so a same-host reader can tell whether what it
gathered was reused. A namespace's reader maps only that namespace's slabs.

Leases: FetchDescriptors leases the extents it describes; `free` of a leased extent is deferred
until every lease on it is released or has expired (TTL), so a reader holding a lease never sees
its memory reused, and a crashed reader's leases expire. A FetchClusters stream pins the extents
it reads the same way (`pin` / `unpin`), so a delete or an append that moves a head while the
stream is still sending cannot free them under it.

`HeapArena` has the same interface over private numpy memory (shared memory off/unavailable).
Everything runs on the store's event-loop thread: no locking.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvstore_server.slab import Fallocate, Slab
from wavekv_proto.layout import EXTENT_HEADER_BYTES, EXTENT_MAGIC, IDENTITY_SLAB

log = logging.getLogger("kvstore_server.arena")

SLAB_ROUND = 2 << 20  # slab sizes are multiples of 2 MiB
_PID_PREFIX_RE = re.compile(r"^wavekv-(\d+)-[0-9a-f]+-\d+$")


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


@dataclass(slots=True, frozen=True)
class ArenaConfig:
    """Options shared by every namespace's arena of one store."""

    directory: Path = Path("/dev/shm")
    slab_bytes: int = 256 << 20  # data slab size (sparse); larger extents get their own slab
    max_lease_ttl_s: float = 60.0
    store_tag: str = ""  # file-name tag: the pid (removed as stale once it died) or a store id

    def __post_init__(self) -> None:
        if self.slab_bytes < SLAB_ROUND:
            raise ValueError(f"slab_bytes={self.slab_bytes} must be >= {SLAB_ROUND}")
        if self.max_lease_ttl_s <= 0:
            raise ValueError(f"max_lease_ttl_s={self.max_lease_ttl_s} must be > 0")


class HeapArena:
    """Private memory with the arena interface (no sharing, no leases needed)."""

    shared = False
    arena_id = ""

    def alloc(self, nbytes: int, align: int) -> Extent:
        del align  # numpy allocations are 64-byte aligned; the heap path never views rows by slab
        return Extent(-1, 0, (0, nbytes), 0, np.empty(nbytes, np.uint8))

    def free(self, extent: Extent) -> None:
        del extent  # garbage collected

    def pin(self, extents: list[Extent]) -> None:
        del extents  # readers' views keep private memory alive

    def unpin(self, extents: list[Extent]) -> None:
        del extents

    def close(self) -> None:
        return None


class SharedArena:
    """One namespace's slab files; see the module docstring."""

    shared = True

    def __init__(
        self,
        config: ArenaConfig,
        arena_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        fallocate: Fallocate = os.posix_fallocate,
    ) -> None:
        if not config.directory.is_dir():
            raise OSError(f"shared-memory directory {str(config.directory)!r} does not exist")
        self.config = config
        self.clock = clock
        self._fallocate = fallocate
        self.arena_id = arena_id or secrets.token_hex(16)
        self.file_prefix = f"wavekv-{config.store_tag}-{self.arena_id[:16]}-"
        self.slabs: dict[int, Slab] = {}
        self.next_index = IDENTITY_SLAB + 1
        self.generation = 0
        self._leases: dict[int, tuple[float, list[Extent]]] = {}
        self.allocated_bytes = 0  # bytes of live blocks (headers and padding included)
        self.identity_since = 0.0  # clock when slab 0 was (re)created

    @property
    def directory(self) -> Path:
        return self.config.directory

    @property
    def max_lease_ttl_s(self) -> float:
        return self.config.max_lease_ttl_s

    def open_identity(self) -> None:
        """Create slab 0 (header only) if it is not there; OSError when shm is unusable."""
        if IDENTITY_SLAB not in self.slabs:
            path = self.slab_path(IDENTITY_SLAB)
            path.unlink(missing_ok=True)  # a previous run's, same arena id (warm restart)
            slab = Slab.create(IDENTITY_SLAB, path, SLAB_ROUND, self.arena_id, self._fallocate)
            slab.free.clear()  # never allocated from
            self.slabs[IDENTITY_SLAB] = slab
            self.identity_since = self.clock()

    def close_identity_if_idle(self, min_age_s: float) -> bool:
        """Remove slab 0 when the arena holds nothing (no data slab, no lease) and slab 0 is
        older than min_age_s (a reader maps it right after GetArena); `open_identity` brings it
        back, same arena id and content. True if removed."""
        idle = set(self.slabs) == {IDENTITY_SLAB} and not self._leases
        if not idle or self.clock() - self.identity_since < min_age_s:
            return False
        self.slabs.pop(IDENTITY_SLAB).path.unlink(missing_ok=True)
        return True

    def alloc(self, nbytes: int, align: int) -> Extent:
        """An extent of nbytes whose data offset is a multiple of `align` (itself a multiple
        of 64). Raises OSError (ENOSPC...) when the memory cannot be committed."""
        self.expire()
        align = math.lcm(64, align)
        for slab in self.slabs.values():
            found = slab.fit(nbytes, align, EXTENT_HEADER_BYTES)
            if found is not None:
                return self._take(slab, *found, nbytes)
        want = _round_up(4096 + EXTENT_HEADER_BYTES + align + nbytes, SLAB_ROUND)
        slab = self._new_slab(max(self.config.slab_bytes, want))
        found = slab.fit(nbytes, align, EXTENT_HEADER_BYTES)
        assert found is not None
        try:
            return self._take(slab, *found, nbytes)
        except BaseException:
            self._drop_slab(slab)
            raise

    def _take(self, slab: Slab, i: int, start: int, data: int, nbytes: int) -> Extent:
        end = _round_up(data + nbytes, 64)
        slab.commit(start, end, self._fallocate)  # raises before anything changed
        slab.carve(i, start, end)
        self.generation += 1
        return self._extent(slab, start, end, data, nbytes, self.generation)

    def _extent(
        self, slab: Slab, start: int, end: int, data: int, nbytes: int, generation: int
    ) -> Extent:
        header = slab.buf[data - EXTENT_HEADER_BYTES : data].view(np.uint64)
        header[0], header[1] = EXTENT_MAGIC, generation
        self.allocated_bytes += end - start
        view = slab.buf[data : data + nbytes]
        return Extent(slab.index, data, (start, end - start), generation, view)

    def reattach(
        self, slab_index: int, block: tuple[int, int], data: int, nbytes: int, generation: int
    ) -> Extent:
        """The extent a journal names, in a slab attached at warm restart (`attach_slab`)."""
        slab = self.slabs[slab_index]
        start, size = block
        slab.take(start, start + size)
        self.generation = max(self.generation, generation)
        return self._extent(slab, start, start + size, data, nbytes, generation)

    def attach_slab(self, index: int) -> Slab | None:
        """Map data slab `index` left by a previous run (None if the file is gone)."""
        path = self.slab_path(index)
        if not path.exists():
            return None
        slab = Slab.attach(index, path)
        if slab.arena_id() != self.arena_id:
            return None
        self.slabs[index] = slab
        self.next_index = max(self.next_index, index + 1)
        return slab

    def free(self, extent: Extent) -> None:
        """Free now, or when the last lease on it ends."""
        if extent.leases > 0:
            extent.pending_free = True
            return
        self._release(extent)

    def _release(self, extent: Extent) -> None:
        slab = self.slabs[extent.slab]
        extent.generation, extent.pending_free = 0, False
        slab.release(*extent.block)  # zeroes the header (generation) and the data
        self.allocated_bytes -= extent.block[1]
        if slab.empty:
            self._drop_slab(slab)

    def _drop_slab(self, slab: Slab) -> None:
        """Forget an empty data slab: its file goes; readers' mappings stay valid until unmapped
        (the mapping itself is unmapped when its last view is garbage collected)."""
        del self.slabs[slab.index]
        slab.path.unlink(missing_ok=True)
        log.info("slab removed", extra={"path": str(slab.path)})

    def lease(self, extents: list[Extent], ttl_s: float) -> tuple[int, float]:
        """Pin extents for ttl_s (capped at max_lease_ttl_s); returns (lease id, granted ttl)."""
        self.expire()
        cap = self.config.max_lease_ttl_s
        ttl = min(ttl_s, cap) if ttl_s > 0 else cap / 6
        lease_id = secrets.randbits(63)
        for e in extents:
            e.leases += 1
        self._leases[lease_id] = (self.clock() + ttl, extents)
        return lease_id, ttl

    def pin(self, extents: list[Extent]) -> None:
        """Keep extents from being freed or reused until `unpin` (a stream reading them)."""
        for e in extents:
            e.leases += 1

    def unpin(self, extents: list[Extent]) -> None:
        self._unpin(extents)

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
        return self.config.directory / f"{self.file_prefix}{index}"

    def slab_size(self, index: int) -> int:
        return self.slabs[index].size

    def _new_slab(self, size: int) -> Slab:
        index = self.next_index
        slab = Slab.create(index, self.slab_path(index), size, self.arena_id, self._fallocate)
        self.next_index += 1
        self.slabs[index] = slab
        log.info("slab created", extra={"path": str(slab.path), "bytes": size})
        return slab

    def close(self, unlink: bool = True) -> None:
        """Unlink the slab files (mappings held by readers stay valid until they unmap); a
        persistent store keeps them (`unlink=False`) for its next start."""
        if unlink:
            for slab in self.slabs.values():
                slab.path.unlink(missing_ok=True)
        self.slabs.clear()
        self._leases.clear()


def remove_stale_slabs(directory: Path) -> int:
    """Unlink slab files left by non-persistent store processes that no longer exist."""
    removed = 0
    for path in directory.glob("wavekv-*"):
        m = _PID_PREFIX_RE.match(path.name)
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


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple
