"""Wave buffer: a device cache of whole clusters in 8-vector pages, LRU over clusters.

One `WaveBuffer` serves one layer for R = B * Hkv rows (one row per (sequence, kv_head)); every
operation is vectorised over rows and clusters. Each row owns `pages` pages plus one scratch page
(index `pages`) that absorbs masked writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernels import copy_runs, kernels_available

_NEVER = torch.iinfo(torch.int64).max


@dataclass(slots=True)
class AdmitResult:
    """Per-row counts of one admission step (device tensors, [R] int64)."""

    admitted: torch.Tensor
    rejected: torch.Tensor  # misses that did not fit even after evicting every evictable cluster
    evicted: torch.Tensor


class WaveBuffer:
    """LRU cache of clusters for R rows; cluster ids are global per row."""

    def __init__(
        self,
        rows: int,
        pages: int,
        page_tokens: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.rows, self.pages, self.page_tokens = rows, pages, page_tokens
        shape = (rows, pages + 1, page_tokens, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # [R, P+1, pt, D]
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # [R, P+1, pt, D]
        self.owner = torch.full((rows, pages + 1), -1, dtype=torch.int64, device=device)
        self.owner[:, pages] = -2  # scratch page: never free, never evictable
        self.fill = torch.zeros(rows, pages + 1, dtype=torch.int64, device=device)
        self.stamp = torch.full((rows, 1), -1, dtype=torch.int64, device=device)  # [R, C+1]
        self.clock = torch.zeros(1, dtype=torch.int64, device=device)  # LRU time (device)
        self.hits = torch.zeros(rows, dtype=torch.int64, device=device)  # cumulative
        self.misses = torch.zeros(rows, dtype=torch.int64, device=device)
        self.evictions = torch.zeros(rows, dtype=torch.int64, device=device)
        self._scratch: torch.Tensor | None = None  # [R, S] int64 for the fused admission

    @property
    def num_clusters(self) -> int:
        return self.stamp.shape[1] - 1

    def grow(self, num_clusters: int) -> None:
        """Track `num_clusters` cluster ids (new ids start non-resident)."""
        extra = num_clusters - self.num_clusters
        if extra > 0:
            pad = torch.full((self.rows, extra), -1, dtype=torch.int64, device=self.stamp.device)
            self.stamp = torch.cat([self.stamp[:, :-1], pad, self.stamp[:, -1:]], dim=1)

    def scratch(self, width: int) -> torch.Tensor:
        """A persistent [R, width] int64 scratch row per row (fused bookkeeping kernels)."""
        if self._scratch is None or self._scratch.shape[1] < width:
            self._scratch = torch.empty(
                self.rows, width, dtype=torch.int64, device=self.hits.device
            )
        return self._scratch

    def reset_rows(self, lo: int, hi: int) -> None:
        """Rows [lo, hi) cache nothing (a batch slot taken by a new sequence)."""
        self.owner[lo:hi] = -1
        self.owner[lo:hi, self.pages] = -2
        self.fill[lo:hi] = 0
        self.stamp[lo:hi] = -1
        for counter in (self.hits, self.misses, self.evictions):
            counter[lo:hi] = 0

    def advance_clock(self, n: int) -> None:
        """The LRU clock after a step of n retrieved clusters (stamps base .. base + n used)."""
        self.clock += n + 1

    def resident(self) -> torch.Tensor:
        """[R, C] bool: clusters currently cached."""
        return self.stamp[:, :-1] >= 0

    def lookup(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids [R, n] (rank order) -> hit [R, n] bool; invalid entries are never hits."""
        return valid & (self.stamp.gather(1, self._safe(ids, valid)) >= 0)

    def hit_pages(
        self, ids: torch.Tensor, hit: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copy the pages of hit clusters, compacted: (keys, values [R, width, pt, D],
        fill [R, width] valid tokens per page)."""
        take, fill, _ = self.hit_table(ids, hit, width)
        return _take_pages(self.keys, take), _take_pages(self.values, take), fill

    def hit_table(
        self, ids: torch.Tensor, hit: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Page table of the hit clusters, hit pages first (no copy): (take [R, width] page
        indices, fill [R, width] valid tokens per page, count [R] hit pages in `take`)."""
        selected = torch.zeros_like(self.stamp, dtype=torch.bool)  # [R, C+1]
        selected.scatter_(1, self._safe(ids, hit), True)
        selected[:, -1] = False
        page_sel = (self.owner >= 0) & selected.gather(1, self.owner.clamp(min=0))  # [R, P+1]
        take = partition_order(page_sel)[:, :width].contiguous()  # [R, width]
        fill = torch.where(page_sel.gather(1, take), self.fill.gather(1, take), 0)
        return take, fill, page_sel.sum(1).clamp(max=width)

    def admit(
        self,
        ids: torch.Tensor,  # [R, n] retrieved cluster ids in rank order (best first)
        valid: torch.Tensor,  # [R, n] bool: real entries (not padding, not overflow)
        hit: torch.Tensor,  # [R, n] bool from `lookup`
        sizes: torch.Tensor,  # [R, n] int64 tokens per cluster
        miss_keys: torch.Tensor,  # [R, M, D] misses packed in rank order (execution buffer)
        miss_values: torch.Tensor,  # [R, M, D]
        miss_offsets: torch.Tensor,  # [R, n + 1] token offsets of the packed misses
    ) -> AdmitResult:
        """Touch hits, evict LRU clusters and admit misses (rank order, while they fit) by
        copying them from the execution buffer. Best-ranked clusters end most recent."""
        n = ids.shape[1]
        miss = valid & ~hit
        base = self.clock.clone()  # [1]
        new_stamp = base + (n - torch.arange(n, device=ids.device)).expand_as(ids)  # [R, n]
        self.advance_clock(n)
        self.stamp.scatter_(1, self._safe(ids, hit), new_stamp)
        self.hits += hit.sum(1)
        self.misses += miss.sum(1)
        order, kept = compact_order(miss)
        miss_ids = torch.where(kept, ids.gather(1, order), 0)  # [R, n] misses first, rank order
        miss_sizes = torch.where(kept, sizes.gather(1, order), 0)
        miss_stamp = new_stamp.gather(1, order)
        miss_pages = self._pages_of(miss_sizes)
        free = (self.owner == -1).sum(1)  # [R]
        page_stamp = self.stamp.gather(1, self.owner.clamp(min=0))
        evictable = (self.owner >= 0) & (page_stamp < base)  # [R, P+1]
        cum = miss_pages.cumsum(1)  # [R, n]
        fits = (cum <= (free + evictable.sum(1)).unsqueeze(1)) & (miss_pages > 0)
        admitted_pages = torch.where(fits, miss_pages, 0).sum(1)  # [R]
        evicted = self._evict(evictable, page_stamp, (admitted_pages - free).clamp(min=0))
        width = min(self.pages + 1, miss_keys.shape[1] // self.page_tokens + n)
        self._place(
            miss_ids,
            torch.where(fits, miss_pages, 0),
            miss_sizes,
            miss_keys,
            miss_values,
            miss_offsets,
            width,
        )
        self.stamp.scatter_(1, self._safe(miss_ids, fits), miss_stamp)
        self.stamp[:, -1] = -1
        self.evictions += evicted
        return AdmitResult(
            admitted=fits.sum(1), rejected=(miss_pages > 0).sum(1) - fits.sum(1), evicted=evicted
        )

    def _evict(
        self, evictable: torch.Tensor, page_stamp: torch.Tensor, need: torch.Tensor
    ) -> torch.Tensor:
        """Free whole least-recent clusters until `need` [R] pages are freed; returns counts."""
        key = torch.where(evictable, page_stamp, _NEVER)
        sorted_key, order = torch.sort(key, dim=1, stable=True)  # [R, P+1]
        pos = torch.arange(key.shape[1], device=key.device).expand_as(key)
        starts = torch.ones_like(evictable)
        starts[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
        run_start = torch.cummax(torch.where(starts, pos, 0), dim=1).values
        gone_sorted = (sorted_key != _NEVER) & (run_start < need.unsqueeze(1))  # [R, P+1]
        gone = torch.zeros_like(evictable).scatter_(1, order, gone_sorted)
        self.stamp.scatter_(1, torch.where(gone, self.owner, self.num_clusters), -1)
        self.owner.masked_fill_(gone, -1)
        return (gone_sorted & starts).sum(1)

    def _place(
        self,
        miss_ids: torch.Tensor,
        pages: torch.Tensor,
        sizes: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        offsets: torch.Tensor,
        width: int,
    ) -> None:
        """Copy admitted misses' pages from the packed execution-buffer rows into free pages.
        `width` bounds the pages placed per row (admitted pages never exceed it)."""
        p1, pt, r, d = self.pages + 1, self.page_tokens, self.rows, keys.shape[-1]
        dev = self.owner.device
        free_list = partition_order(self.owner == -1)
        q = torch.arange(width, device=dev).expand(r, width).contiguous()  # [R, W] page slots
        cum = pages.cumsum(1)  # [R, n]
        which = torch.searchsorted(cum, q, right=True).clamp(max=pages.shape[1] - 1)
        page_in = q - (cum - pages).gather(1, which)  # page index inside its cluster
        ok = q < cum[:, -1:]
        dest = torch.where(ok, free_list[:, :width], self.pages)  # [R, W] (scratch if unused)
        within = page_in.unsqueeze(-1) * pt + torch.arange(pt, device=dev)  # [R, W, pt]
        src = (offsets.gather(1, which).unsqueeze(-1) + within).clamp(max=keys.shape[1] - 1)
        page_fill = (sizes.gather(1, which) - page_in * pt).clamp(0, pt)  # [R, W]
        if kernels_available(dev):  # copy only the valid rows of the admitted pages
            row0 = torch.arange(r, device=dev).view(r, 1)
            src0 = (row0 * keys.shape[1] + offsets.gather(1, which) + page_in * pt) * d
            copy_runs(
                keys, values, self.keys, self.values, src0.view(-1), src0.view(-1),
                ((row0 * p1 + dest) * pt * d).view(-1), torch.where(ok, page_fill, 0).view(-1), d,
                block_rows=pt if pt & (pt - 1) == 0 else 16,
            )  # fmt: skip
        else:
            flat_src = (src + (torch.arange(r, device=dev) * keys.shape[1]).view(r, 1, 1)).view(-1)
            flat_dst = (dest + (torch.arange(r, device=dev) * p1).view(r, 1)).view(-1)
            self.keys.view(-1, pt, d).index_copy_(
                0, flat_dst, keys.reshape(-1, d).index_select(0, flat_src).view(-1, pt, d)
            )
            self.values.view(-1, pt, d).index_copy_(
                0, flat_dst, values.reshape(-1, d).index_select(0, flat_src).view(-1, pt, d)
            )
        self.owner.scatter_(1, dest, torch.where(ok, miss_ids.gather(1, which), -2))
        self.fill.scatter_(1, dest, page_fill)
        self.owner[:, self.pages] = -2

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the mutable state (to undo a CUDA-graph warm-up run)."""
        return [t.clone() for t in self._state()]

    def restore(self, saved: list[torch.Tensor]) -> None:
        for t, s in zip(self._state(), saved, strict=True):
            t.copy_(s)

    def _state(self) -> list[torch.Tensor]:
        return [
            self.keys,
            self.values,
            self.owner,
            self.fill,
            self.stamp,
            self.clock,
            self.hits,
            self.misses,
            self.evictions,
        ]

    def _pages_of(self, sizes: torch.Tensor) -> torch.Tensor:
        return (sizes + self.page_tokens - 1) // self.page_tokens

    def _safe(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Ids where `keep`, else the dummy column C (absorbs scatters, never resident)."""
        return torch.where(keep, ids, self.num_clusters)


def compact_order(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order [R, n] that moves kept entries to the front (stable) and the kept mask in it."""
    order = partition_order(keep)
    return order, keep.gather(1, order)


def partition_order(keep: torch.Tensor) -> torch.Tensor:
    """Stable partition [R, n]: indices of kept entries in order, then the others in order.
    Same result as a stable sort of (not keep), by prefix sums instead of a sort."""
    k = keep.to(torch.int64)
    kept_before = k.cumsum(1) - k  # [R, n]
    idx = torch.arange(keep.shape[1], device=keep.device).expand_as(k)
    dest = torch.where(keep, kept_before, k.sum(1, keepdim=True) + idx - kept_before)
    return torch.empty_like(k).scatter_(1, dest, idx)


def _take_pages(pool: torch.Tensor, take: torch.Tensor) -> torch.Tensor:
    """pool [R, P+1, pt, D] gathered at page indices take [R, W] -> [R, W, pt, D]."""
    r, p1 = pool.shape[:2]
    flat = (take + (torch.arange(r, device=take.device) * p1).view(r, 1)).view(-1)
    return pool.view(r * p1, *pool.shape[2:]).index_select(0, flat).view(r, -1, *pool.shape[2:])
