"""The journal and its compaction, in process: what was applied survives reopening, however
often the journal was rewritten in between (the store process itself: test_recovery.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvstore_server import persistence
from kvstore_server.journal import read_records
from kvstore_server.recovery import PersistOptions, open_persistent_store
from kvstore_server.segments import Segment
from kvstore_server.sequence import Geometry
from kvstore_server.store import Store, StoreConfig

GEOMETRY = Geometry(2, 2, 16, "float16")  # row_bytes 32


def _segment(rng: np.random.Generator, layer: int, head: int) -> Segment:
    c = int(rng.integers(1, 6))
    sizes = rng.integers(1, 5, c).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    meta = rng.standard_normal((c, 16)).astype(np.float32)
    kv = rng.integers(0, 256, (2, n, 32), dtype=np.uint8)
    return Segment(layer, head, meta, sizes, meta, offsets, kv[0], kv[1])


def _open(tmp: Path) -> Store:
    options = PersistOptions(tmp / "data", tmp / "slabs", "no", 2 << 20)
    return open_persistent_store(options, StoreConfig())


def _state(store: Store) -> dict:
    out = {}
    for seq in sorted(store.sequences(), key=lambda s: s.sequence_id):
        out[seq.sequence_id] = (
            seq.bytes_used,
            {
                key: (h.keys.tobytes(), h.values.tobytes(), h.offsets.tolist(), h.num_segments)
                for key, h in sorted(seq.heads.items())
            },
        )
    return out


def test_what_was_applied_survives_reopening_across_compactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compact at every point the store may: after each commit and delete
    monkeypatch.setattr(persistence.Persistence, "maybe_compact", persistence.Persistence.compact)
    rng = np.random.default_rng(0)
    store = _open(tmp_path)
    for i in range(12):
        sid = f"s{i}"
        store.create("ns", sid, GEOMETRY)
        for _ in range(3):
            segs = [_segment(rng, int(rng.integers(0, 2)), int(rng.integers(0, 2)))]
            reservation = store.reservation("ns")
            reservation.grow(sum(s.nbytes for s in segs), "test")
            store.commit("ns", sid, segs, reservation)
        if i % 3 == 0:
            store.delete("ns", f"s{i // 2}")
    want = _state(store)
    assert len(want) == 8
    _records, size = read_records(tmp_path / "data" / persistence.JOURNAL_FILE)
    assert size == (tmp_path / "data" / persistence.JOURNAL_FILE).stat().st_size
    del store  # as after a crash: no clean stop
    reopened = _open(tmp_path)
    assert _state(reopened) == want
    assert reopened.bytes_used == sum(b for b, _ in want.values())
