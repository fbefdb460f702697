"""SharedArena allocator, leases, generations, memory given back (store side, no gRPC)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kvstore_server.arena import ArenaConfig, SharedArena, remove_stale_slabs
from kvstore_server.segments import HeadStore, Segment
from wavekv_proto.layout import EXTENT_HEADER_BYTES

SLAB = 2 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _arena(directory: Path, **kw: object) -> SharedArena:
    a = SharedArena(ArenaConfig(directory, SLAB, 5.0, "test"), clock=Clock(), **kw)  # type: ignore[arg-type]
    a.open_identity()
    return a


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[SharedArena]:
    a = _arena(tmp_path)
    yield a
    a.close()


def _generation(a: SharedArena, slab: int, offset: int) -> int:
    return int(a.slabs[slab].buf[offset - EXTENT_HEADER_BYTES : offset].view(np.uint64)[1])


def _disk_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_alloc_alignment_reuse_and_coalescing(arena: SharedArena) -> None:
    x = arena.alloc(1000, 192)
    y = arena.alloc(5000, 256)
    keep = arena.alloc(64, 64)  # keeps the slab alive when x and y go
    assert x.slab == y.slab == 1  # slab 0 only identifies the arena
    assert x.offset % 192 == 0 and y.offset % 256 == 0
    assert x.block[0] + x.block[1] <= y.block[0]
    free_before = arena.slabs[1].free_bytes
    arena.free(x)
    arena.free(y)
    assert arena.slabs[1].free_bytes == free_before + x.block[1] + y.block[1]
    assert len(arena.slabs[1].free) == 2  # x and y merged into one block, plus the tail
    z = arena.alloc(6000, 64)
    assert z.slab == 1 and z.block[0] == x.block[0]  # freed memory is reused first
    arena.free(keep)


def test_oversized_allocation_gets_its_own_slab(arena: SharedArena) -> None:
    small = arena.alloc(4096, 64)
    big = arena.alloc(5 << 20, 64)
    assert big.slab == 2 and arena.slabs[2].size >= 5 << 20
    assert arena.slab_path(2).exists() and small.slab == 1


def test_generation_set_on_alloc_wiped_on_free(arena: SharedArena) -> None:
    keep = arena.alloc(64, 64)
    e = arena.alloc(4096, 64)
    assert _generation(arena, e.slab, e.offset) == e.generation > 0
    off = e.offset
    e.data[:] = 7
    arena.free(e)
    assert _generation(arena, 1, off) == 0
    assert not arena.slabs[1].buf[off - EXTENT_HEADER_BYTES : off + 4096].any()  # zeroed
    again = arena.alloc(4096, 64)
    assert again.offset == off and _generation(arena, 1, off) == again.generation
    assert not again.data.any()  # a new extent never shows the previous owner's bytes
    arena.free(keep)


def test_empty_slabs_are_removed_and_pages_returned(arena: SharedArena) -> None:
    keep = arena.alloc(64, 64)
    path = arena.slab_path(1)
    big = arena.alloc(1 << 20, 64)
    big.data[:] = 1
    assert _disk_bytes(path) >= 1 << 20  # committed when allocated
    arena.free(big)
    assert _disk_bytes(path) < 64 << 10  # pages punched out of the file: back to the OS
    arena.free(keep)
    assert not path.exists() and 1 not in arena.slabs  # empty data slab removed
    assert arena.slab_path(0).exists()  # the identity slab stays
    again = arena.alloc(64, 64)
    assert again.slab == 2  # slab indices are never reused


def test_sparse_slabs_commit_only_what_is_allocated(arena: SharedArena) -> None:
    e = arena.alloc(64 << 10, 64)
    assert arena.slabs[1].size == SLAB
    assert _disk_bytes(arena.slab_path(1)) <= 128 << 10  # header page + the extent's pages
    assert _disk_bytes(arena.slab_path(0)) <= 8 << 10
    arena.free(e)


def test_full_tmpfs_fails_the_allocation_and_changes_nothing(tmp_path: Path) -> None:
    budget = [3 << 20]

    def fallocate(fd: int, offset: int, length: int) -> None:
        """posix_fallocate on a tmpfs with `budget` bytes left."""
        if length > budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        budget[0] -= length
        os.posix_fallocate(fd, offset, length)

    a = _arena(tmp_path, fallocate=fallocate)
    e = a.alloc(1 << 20, 64)
    before = [list(b) for b in a.slabs[1].free]
    with pytest.raises(OSError) as info:
        a.alloc(3 << 20, 64)  # needs a new slab and more than is left
    assert info.value.errno == errno.ENOSPC
    assert [list(b) for b in a.slabs[1].free] == before and sorted(a.slabs) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        a.slab_path(i).name for i in (0, 1)
    )  # the half-made slab file is gone
    a.free(e)
    a.close()


def test_lease_defers_free_until_released(arena: SharedArena) -> None:
    keep = arena.alloc(64, 64)
    e = arena.alloc(4096, 64)
    lease, ttl = arena.lease([e], 1.0)
    assert ttl == 1.0
    arena.free(e)
    assert _generation(arena, 1, e.offset) == e.generation  # still readable
    other = arena.alloc(4096, 64)
    assert other.block[0] != e.block[0]  # leased memory is not reused
    assert arena.release_leases([lease, 12345]) == 1
    assert e.generation == 0 and arena.num_leases == 0
    arena.free(keep)


def test_leases_expire_after_ttl(arena: SharedArena) -> None:
    e = arena.alloc(4096, 64)
    arena.lease([e], 100.0)  # capped at max_lease_ttl_s = 5
    arena.free(e)
    clock = arena.clock
    assert isinstance(clock, Clock)
    clock.now = 4.9
    assert arena.expire() == 0 and e.pending_free
    clock.now = 5.0
    assert arena.expire() == 1 and not e.pending_free and e.generation == 0


def _seg(n: int) -> Segment:
    return Segment(
        0,
        0,
        np.zeros((1, 4), np.float32),
        np.array([n]),
        np.zeros((1, 4), np.float32),
        np.array([0, n]),
        np.full((n, 8), n % 251, np.uint8),
        np.full((n, 8), (n + 1) % 251, np.uint8),
    )


def test_headstore_growth_frees_old_extent(arena: SharedArena) -> None:
    head = HeadStore(head_dim=4, row_bytes=8, arena=arena)
    head.append([_seg(100)])
    first = head.extent
    assert first is not None
    head.append([_seg(7)])
    assert head.extent is not first and first.generation == 0
    assert (head.keys[:100] == 100).all() and (head.keys[100:] == 7).all()
    assert (head.values[100:] == 8).all()
    assert head.extent is not None and head.extent.offset % 8 == 0


def test_headstore_prepare_abort_leaves_it_untouched(arena: SharedArena) -> None:
    head = HeadStore(head_dim=4, row_bytes=8, arena=arena)
    head.append([_seg(10)])
    extent, allocated = head.extent, arena.allocated_bytes
    growth = head.prepare([_seg(50)])  # needs a bigger extent
    head.write(growth)
    head.abort(growth)
    assert head.extent is extent and arena.allocated_bytes == allocated
    assert (head.num_rows, head.num_clusters, head.num_segments) == (10, 1, 1)
    assert (head.keys == 10).all() and head.offsets.tolist() == [0, 10]


def test_stale_slab_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "wavekv-999999999-abc-0"
    mine = tmp_path / f"wavekv-{os.getpid()}-abc-0"
    persistent = tmp_path / "wavekv-d1234-abc-1"  # a --data-dir store's: never removed here
    for path in (dead, mine, persistent):
        path.write_bytes(b"x")
    assert remove_stale_slabs(tmp_path) == 1
    assert not dead.exists() and mine.exists() and persistent.exists()


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="does not exist"):
        SharedArena(ArenaConfig(tmp_path / "nope"))


def test_identity_slab_goes_while_the_arena_holds_nothing(arena: SharedArena) -> None:
    clock = arena.clock
    assert isinstance(clock, Clock)
    e = arena.alloc(4096, 64)
    clock.now += 10
    assert not arena.close_identity_if_idle(5.0)  # it holds data
    arena.free(e)
    assert not arena.close_identity_if_idle(60.0)  # too young: a reader may be about to map it
    assert arena.close_identity_if_idle(5.0)
    assert not any(arena.directory.iterdir())  # nothing of this arena left in the directory
    arena.open_identity()  # GetArena or a put brings it back: same arena id, same content
    assert arena.slabs[0].arena_id() == arena.arena_id
