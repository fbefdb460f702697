"""SharedArena allocator, leases and generations (store side, no gRPC)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kvstore_server.arena import EXTENT_HEADER, SharedArena, remove_stale_slabs
from kvstore_server.segments import HeadStore, Segment


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def arena(tmp_path: Path) -> SharedArena:
    a = SharedArena(tmp_path, slab_bytes=2 << 20, max_lease_ttl_s=5.0, clock=Clock())
    yield a
    a.close()


def _generation(a: SharedArena, slab: int, offset: int) -> int:
    return int(a.slabs[slab].buf[offset - EXTENT_HEADER : offset].view(np.uint64)[1])


def test_alloc_alignment_reuse_and_coalescing(arena: SharedArena) -> None:
    x = arena.alloc(1000, 192)
    y = arena.alloc(5000, 256)
    assert x.offset % 192 == 0 and y.offset % 256 == 0
    assert x.block[0] + x.block[1] <= y.block[0]
    free_before = arena.slabs[0].free_bytes
    arena.free(x)
    arena.free(y)
    assert arena.slabs[0].free_bytes == free_before + x.block[1] + y.block[1]
    assert len(arena.slabs[0].free) == 1  # neighbours merged back into one block
    z = arena.alloc(6000, 64)
    assert z.slab == 0 and z.block[0] == x.block[0]  # freed memory is reused first


def test_oversized_allocation_gets_its_own_slab(arena: SharedArena) -> None:
    big = arena.alloc(5 << 20, 64)
    assert big.slab == 1 and arena.slabs[1].size >= 5 << 20
    assert arena.slab_path(1).exists()


def test_generation_set_on_alloc_zeroed_on_free(arena: SharedArena) -> None:
    e = arena.alloc(4096, 64)
    assert _generation(arena, e.slab, e.offset) == e.generation > 0
    off = e.offset
    arena.free(e)
    assert _generation(arena, 0, off) == 0
    again = arena.alloc(4096, 64)
    assert again.offset == off and _generation(arena, 0, off) == again.generation


def test_lease_defers_free_until_released(arena: SharedArena) -> None:
    e = arena.alloc(4096, 64)
    lease, ttl = arena.lease([e], 1.0)
    assert ttl == 1.0
    arena.free(e)
    assert _generation(arena, 0, e.offset) == e.generation  # still readable
    other = arena.alloc(4096, 64)
    assert other.block[0] != e.block[0]  # leased memory is not reused
    assert arena.release_leases([lease, 12345]) == 1
    assert e.generation == 0 and arena.num_leases == 0


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


def test_headstore_growth_frees_old_extent(arena: SharedArena) -> None:
    head = HeadStore(head_dim=4, row_bytes=8, arena=arena)

    def seg(n: int) -> Segment:
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

    head.append([seg(100)])
    first = head.extent
    assert first is not None
    head.append([seg(7)])
    assert head.extent is not first and first.generation == 0
    assert (head.keys[:100] == 100).all() and (head.keys[100:] == 7).all()
    assert (head.values[100:] == 8).all()
    assert head.extent is not None and head.extent.offset % 8 == 0


def test_stale_slab_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "wavekv-999999999-abc-0"
    mine = tmp_path / f"wavekv-{os.getpid()}-abc-0"
    dead.write_bytes(b"x")
    mine.write_bytes(b"x")
    assert remove_stale_slabs(tmp_path) == 1
    assert not dead.exists() and mine.exists()


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="does not exist"):
        SharedArena(tmp_path / "nope")
