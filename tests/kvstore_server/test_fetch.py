"""The chunked FetchClusters gather against a plain per-cluster reference, on fresh inputs."""

from __future__ import annotations

import numpy as np
import pytest

from kvstore_server.arena import HeapArena
from kvstore_server.errors import InvalidArgument, ResourceExhausted
from kvstore_server.fetch import FetchEntry, plan_fetch, stream_payload
from kvstore_server.segments import Segment
from kvstore_server.sequence import Geometry
from kvstore_server.store import Store

ALIGN = 64


def _store(rng: np.random.Generator, head_dim: int, dtype: str) -> Store:
    store = Store()
    geometry = Geometry(2, 3, head_dim, dtype)
    store.create("ns", "s", geometry)
    rb = geometry.row_bytes
    segments = []
    for layer in range(2):
        for head in range(3):
            c = int(rng.integers(1, 40))
            sizes = rng.integers(0, 9, c).astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            n = max(int(offsets[-1]), 1)
            if offsets[-1] == 0:
                sizes[0], offsets[1:] = 1, offsets[1:] + 1
            meta = rng.standard_normal((c, head_dim)).astype(np.float32)
            kv = rng.integers(0, 256, (2, n, rb), dtype=np.uint8)
            segments.append(Segment(layer, head, meta, sizes, meta, offsets, kv[0], kv[1]))
    reservation = store.reservation("ns")
    reservation.grow(sum(s.nbytes for s in segments), "test")
    store.commit("ns", "s", segments, reservation)
    return store


def _reference(store: Store, entries: list[FetchEntry]) -> bytes:
    """Payload built cluster by cluster with Python slicing (the layout the protocol defines)."""
    out = bytearray()
    seq = store.get("ns", "s")
    for _, layer, head, ids in entries:
        h = seq.head(layer, head)
        assert h is not None
        for part in (h.keys, h.values):
            for cid in ids.tolist():
                a, b = int(h.offsets[cid]), int(h.offsets[cid + 1])
                out += part[a:b].tobytes()
            out += b"\0" * (-len(out) % ALIGN)
    return bytes(out)


@pytest.mark.parametrize("seed", range(6))
def test_chunked_gather_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    head_dim = int(rng.choice([1, 3, 8, 64]))
    dtype = str(rng.choice(["float16", "bfloat16", "float32"]))
    store = _store(rng, head_dim, dtype)
    seq = store.get("ns", "s")
    entries: list[FetchEntry] = []
    for _ in range(int(rng.integers(1, 8))):
        layer, head = int(rng.integers(0, 2)), int(rng.integers(0, 3))
        c = seq.head(layer, head).num_clusters  # type: ignore[union-attr]
        ids = rng.permutation(c)[: int(rng.integers(0, c + 1))].astype(np.int64)
        entries.append(("s", layer, head, ids))
    plan = plan_fetch(store, "ns", entries)
    want = _reference(store, entries)
    assert plan.total_bytes == len(want)
    row_bytes = Geometry(1, 1, head_dim, dtype).row_bytes
    for stage_bytes in (row_bytes, 4096, 1 << 20):  # rows split over many chunks, or one chunk
        stage = np.empty(stage_bytes + ALIGN, np.uint8)
        got, pos = bytearray(), 0
        for offset, piece in stream_payload(plan, stage):
            assert offset == pos and 0 < piece.shape[0] <= stage.shape[0]
            got += piece.tobytes()
            pos += piece.shape[0]
        assert bytes(got) == want


def test_limits_on_fetches() -> None:
    store = _store(np.random.default_rng(9), 64, "float32")
    ids = np.arange(3, dtype=np.int64)
    with pytest.raises(InvalidArgument, match=r"entries\[1\].cluster_ids\[1\]=0 is repeated"):
        plan_fetch(store, "ns", [("s", 0, 0, ids), ("s", 0, 1, np.array([0, 0]))])
    plan = plan_fetch(store, "ns", [("s", 0, 0, ids)])
    with pytest.raises(ResourceExhausted, match="max_fetch_bytes=1"):
        plan_fetch(store, "ns", [("s", 0, 0, ids)], max_bytes=1)
    assert plan.total_bytes > 0
    assert isinstance(store.arenas.get("ns"), HeapArena)
