"""The store core: all-or-nothing commits, capacity with reservations, sequence TTL."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from kvstore_server.arena import ArenaConfig
from kvstore_server.arenas import Arenas
from kvstore_server.errors import NotFound, ResourceExhausted
from kvstore_server.segments import Segment
from kvstore_server.sequence import SEQUENCE_OVERHEAD_BYTES, Geometry
from kvstore_server.store import Store, StoreConfig

GEOMETRY = Geometry(1, 4, 64, "float32")  # row_bytes 256


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _segment(rng: np.random.Generator, head: int, clusters: int, rows_each: int) -> Segment:
    sizes = np.full(clusters, rows_each, np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    meta = rng.standard_normal((clusters, 64)).astype(np.float32)
    kv = rng.integers(0, 256, (2, n, 256), dtype=np.uint8)
    return Segment(0, head, meta, sizes, meta.copy(), offsets, kv[0], kv[1])


def _commit(store: Store, segments: list[Segment], sid: str = "s") -> list[int]:
    reservation = store.reservation("ns")
    reservation.grow(sum(s.nbytes for s in segments), "test")
    try:
        return store.commit("ns", sid, segments, reservation)
    finally:
        reservation.release()


def _state(store: Store) -> tuple:
    seq = store.get("ns", "s")
    heads = {
        key: (h.num_rows, h.num_clusters, h.num_segments, h.keys.tobytes(), h.offsets.tolist())
        for key, h in sorted(seq.heads.items())
    }
    return store.bytes_used, store.reserved_bytes, seq.bytes_used, heads


def test_a_failed_allocation_on_the_last_head_leaves_every_head_as_it_was(tmp_path: Path) -> None:
    budget = [0]

    def fallocate(fd: int, offset: int, length: int) -> None:  # a tmpfs with `budget` bytes left
        if length > budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        budget[0] -= length
        os.posix_fallocate(fd, offset, length)

    budget[0] = 64 << 20
    arenas = Arenas("require", ArenaConfig(tmp_path, 8 << 20, 60.0, "t"), fallocate=fallocate)
    store = Store(StoreConfig(), arenas)
    store.create("ns", "s", GEOMETRY)
    rng = np.random.default_rng(0)
    _commit(store, [_segment(rng, h, 4, 16) for h in range(4)])
    before = _state(store)
    allocated = arenas.allocated_bytes("ns")
    budget[0] = 3 << 20  # room for the first heads' growth, not the last one's
    big = [_segment(rng, h, 8, 1024) for h in range(4)]  # 2 MiB of K/V per head
    with pytest.raises(OSError) as info:
        _commit(store, big)
    assert info.value.errno == errno.ENOSPC
    assert _state(store) == before  # head 0 did not keep its clusters; bytes_used exact
    assert arenas.allocated_bytes("ns") == allocated  # what the failed commit took is back
    budget[0] = 64 << 20
    firsts = _commit(store, big)  # the same put goes through once there is room
    assert firsts == [4, 4, 4, 4] and store.get("ns", "s").num_segments == 8
    assert store.bytes_used == SEQUENCE_OVERHEAD_BYTES + sum(
        s.nbytes for s in [*[_segment(rng, h, 4, 16) for h in range(4)], *big]
    )


def test_capacity_counts_puts_in_flight() -> None:
    store = Store(StoreConfig(capacity_bytes=1 << 20))
    store.create("ns", "s", GEOMETRY)
    first, second = store.reservation("ns"), store.reservation("ns")
    first.grow(600 << 10, "first")
    with pytest.raises(ResourceExhausted, match="reserved_bytes=614400 by puts in flight"):
        second.grow(600 << 10, "second")
    assert store.reserved_bytes == 600 << 10 and second.bytes == 0
    first.release()
    second.grow(600 << 10, "second")  # room again once the first stream is gone
    second.release()
    assert store.reserved_bytes == 0 and store.usage("ns").reserved_bytes == 0
    assert store.bytes_used == SEQUENCE_OVERHEAD_BYTES


def test_idle_sequences_expire_and_named_ones_are_renewed() -> None:
    clock = Clock()
    store = Store(StoreConfig(sequence_ttl_s=10.0), clock=clock)
    for sid in ("kept", "renewed", "idle"):
        store.create("ns", sid, GEOMETRY)
    clock.now += 6
    store.get("ns", "kept")  # any RPC naming a sequence renews it
    assert store.renew("ns", ["renewed", "never-made"]) == ["never-made"]
    clock.now += 5
    assert store.expire_idle() == 1
    assert [s.sequence_id for s in store.list_sequences("ns")] == ["kept", "renewed"]
    with pytest.raises(NotFound):
        store.get("ns", "idle")
    assert store.expired == {"ns": 1} and store.bytes_used == 2 * SEQUENCE_OVERHEAD_BYTES
    assert Store(StoreConfig(sequence_ttl_s=0.0), clock=clock).expire_idle() == 0


def test_namespaces_are_bounded() -> None:
    store = Store(StoreConfig(max_namespaces=2))
    store.create("a", "s", GEOMETRY)
    store.create("b", "s", GEOMETRY)
    with pytest.raises(ResourceExhausted, match="max_namespaces=2"):
        store.create("c", "s", GEOMETRY)
    store.delete("a", "s")
    store.create("c", "s", GEOMETRY)  # a namespace with nothing left does not count
