"""Wave buffer: exact LRU eviction order and hit counts on tiny caches, vs a plain reference."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from inference_worker.retroinfer import WaveBuffer
from inference_worker.retroinfer.wave_buffer import compact_order

PT = 2  # page tokens in these tests


class ReferenceLRU:
    """One row of the wave buffer, plainly: an OrderedDict from least to most recent."""

    def __init__(self, pages: int) -> None:
        self.pages, self.lru = pages, OrderedDict()
        self.hits = self.misses = 0

    def step(self, ranked: list[int], sizes: dict[int, int]) -> list[int]:
        hits = {c for c in ranked if c in self.lru}
        misses = [c for c in ranked if c not in self.lru]
        self.hits, self.misses = self.hits + len(hits), self.misses + len(misses)
        free = self.pages - sum(self.lru.values())
        evictable = [c for c in self.lru if c not in hits]
        avail = free + sum(self.lru[c] for c in evictable)
        admitted, used = [], 0
        for c in misses:
            used += math.ceil(sizes[c] / PT)
            if used > avail:
                break
            admitted.append(c)
        need, evicted = used_pages(admitted, sizes) - free, []
        for c in evictable:
            if need <= 0:
                break
            need -= self.lru.pop(c)
            evicted.append(c)
        for c in admitted:
            self.lru[c] = math.ceil(sizes[c] / PT)
        for c in reversed(ranked):
            if c in self.lru:
                self.lru.move_to_end(c)
        return evicted


def used_pages(ids: list[int], sizes: dict[int, int]) -> int:
    return sum(math.ceil(sizes[c] / PT) for c in ids)


def _pack(ids: torch.Tensor, miss: torch.Tensor, sizes: torch.Tensor, d: int):
    """Misses packed in rank order like a ClusterSource: token t of cluster c has key c + t/100."""
    rows, n = ids.shape
    keys, offsets = [], torch.zeros(rows, n + 1, dtype=torch.int64)
    for r in range(rows):
        toks = [
            torch.full((int(sizes[r, j]), d), float(ids[r, j]))
            + torch.arange(int(sizes[r, j])).view(-1, 1) / 100
            for j in range(n)
            if miss[r, j]
        ]
        keys.append(torch.cat(toks) if toks else torch.zeros(0, d))
        counts = [int(sizes[r, j]) for j in range(n) if miss[r, j]]
        offsets[r, 1 : len(counts) + 1] = torch.tensor(counts, dtype=torch.int64).cumsum(0)
        offsets[r, len(counts) + 1 :] = offsets[r, len(counts)]
    width = max(max(k.shape[0] for k in keys), 1)
    packed = torch.stack([_pad(k, width) for k in keys])
    return packed, packed.clone() * -1, offsets


def _pad(k: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([k, torch.zeros(width - k.shape[0], k.shape[1])])


def _step(buf: WaveBuffer, ranked: list[list[int]], sizes_of: torch.Tensor):
    ids = torch.tensor(ranked, dtype=torch.int64)
    valid = torch.ones_like(ids, dtype=torch.bool)
    sizes = sizes_of.gather(1, ids)
    hit = buf.lookup(ids, valid)
    miss = valid & ~hit
    keys, values, offsets = _pack(ids, miss, sizes, 3)
    order, kept = compact_order(miss)
    packed_sizes = torch.where(kept, sizes.gather(1, order), 0)
    offs = torch.zeros_like(offsets)
    offs[:, 1:] = packed_sizes.cumsum(1)
    result = buf.admit(ids, valid, hit, sizes, keys, values, offs)
    return hit, result


def _lru_order(buf: WaveBuffer, row: int) -> list[int]:
    stamp = buf.stamp[row, :-1]
    resident = (stamp >= 0).nonzero().flatten()
    return resident[stamp[resident].argsort()].tolist()


def test_tiny_cache_exact_eviction_order_and_hit_counts():
    # 6 pages of 2 tokens; clusters 0..5 of sizes 2, 4, 1, 3, 2, 2 -> pages 1, 2, 1, 2, 1, 1
    sizes = torch.tensor([[2, 4, 1, 3, 2, 2]])
    buf = WaveBuffer(
        rows=1, pages=6, page_tokens=PT, head_dim=3, dtype=torch.float32, device=torch.device("cpu")
    )
    buf.grow(6)
    hit, res = _step(buf, [[1, 0, 2]], sizes)  # all miss; 4 pages used
    assert hit.tolist() == [[False] * 3] and res.admitted.tolist() == [3]
    assert _lru_order(buf, 0) == [2, 0, 1]  # best-ranked (1) most recent
    hit, res = _step(buf, [[3, 2, 4]], sizes)  # 2 hits; 3 and 4 need 3 pages, 2 free -> evict 0
    assert hit.tolist() == [[False, True, False]]
    assert res.evicted.tolist() == [1] and res.admitted.tolist() == [2]
    assert _lru_order(buf, 0) == [1, 4, 2, 3]
    hit, res = _step(buf, [[5, 0]], sizes)  # 2 misses, 2 pages, 0 free -> evict 1 (2 pages)
    assert res.evicted.tolist() == [1] and _lru_order(buf, 0) == [4, 2, 3, 0, 5]
    assert buf.hits.tolist() == [1] and buf.misses.tolist() == [7]
    # page contents: every resident cluster's pages hold its own tokens, in order
    for c in _lru_order(buf, 0):
        pages = (buf.owner[0] == c).nonzero().flatten()
        toks = torch.cat([buf.keys[0, p, : int(buf.fill[0, p])] for p in pages])
        expect = c + torch.arange(int(sizes[0, c])) / 100
        torch.testing.assert_close(toks[:, 0], expect.float())


def test_cluster_larger_than_cache_is_rejected_not_truncated():
    sizes = torch.tensor([[9, 1]])
    buf = WaveBuffer(1, 2, PT, 3, torch.float32, torch.device("cpu"))
    buf.grow(2)
    _, res = _step(buf, [[0, 1]], sizes)
    assert res.rejected.tolist() == [2] and res.admitted.tolist() == [0]  # prefix rule: stop at 0
    assert _lru_order(buf, 0) == []


def test_vectorised_lru_matches_reference_on_random_steps():
    gen = torch.Generator().manual_seed(0)
    rows, clusters, pages, n = 4, 30, 12, 4
    sizes = torch.randint(1, 6, (rows, clusters), generator=gen)
    buf = WaveBuffer(rows, pages, PT, 3, torch.float32, torch.device("cpu"))
    buf.grow(clusters)
    refs = [ReferenceLRU(pages) for _ in range(rows)]
    for _ in range(60):
        pool = torch.rand(rows, clusters, generator=gen)
        pool[:, :8] += 0.8  # a hot set that keeps coming back
        ranked = pool.argsort(dim=1, descending=True)[:, :n].tolist()
        before = [set(_lru_order(buf, r)) for r in range(rows)]
        _step(buf, ranked, sizes)
        for r in range(rows):
            ref_evicted = refs[r].step(ranked[r], {c: int(sizes[r, c]) for c in range(clusters)})
            assert set(ref_evicted) == before[r] - set(_lru_order(buf, r))
            assert _lru_order(buf, r) == list(refs[r].lru), r
    assert buf.hits.tolist() == [ref.hits for ref in refs]
    assert buf.misses.tolist() == [ref.misses for ref in refs]
    assert sum(ref.hits for ref in refs) > 0
