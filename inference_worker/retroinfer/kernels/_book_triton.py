"""Triton kernels of bookkeeping.py (imported only when Triton runs).

One program per row (sequence, kv_head). Rows never share cluster ids or pages, so each program
owns its row of the wave buffer's state. Within a program, `tl.debug_barrier()` orders the
scatter stores and the loads that read them back (scratch rows in global memory). A scalar is
loaded by every thread, so a read-modify-write of one address (counters, the page-table count)
loads at the top and stores after a barrier: no thread may read after another one stored.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def plan_kernel(
    ret, score, ranked, sizes, stamp, owner, fillp, clock,
    out_sizes, out_overflow, out_valid, out_hit, out_miss, out_overflow_ids,
    miss_ids, miss_rank, miss_sizes, take, take_fill, count, hit_count,
    hits_ctr, misses_ctr, totals,
    n, C, P1, W, cap_tokens,
    SORT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """(SORT: rank `ret` by `score` into `ranked` first.) Lookup, overflow, hit touch (LRU
    stamps), compacted misses and the hit-page table (its length in `count`, which admission
    extends, and in `hit_count`, which it leaves alone)."""
    r = tl.program_id(0).to(tl.int64)
    stamp_row = stamp + r * (C + 1)
    base = tl.load(clock)
    hits_before = tl.load(hits_ctr + r)
    misses_before = tl.load(misses_ctr + r)
    i = tl.arange(0, BLOCK_N)
    in_n = i < n
    ids = tl.load(ret + r * n + i, mask=in_n, other=-1)
    if SORT:  # by score descending, ties by position: one bitonic sort of packed keys
        sc = tl.load(score + r * n + i, mask=in_n, other=0.0)
        sc = tl.where(sc == 0.0, 0.0, sc)  # -0.0 ties with 0.0, as in a float comparison
        bits = sc.to(tl.int32, bitcast=True)
        order = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)  # monotone in the score
        low = tl.full([BLOCK_N], 0xFFFFFFFF, tl.int64)
        key = order * tl.full([BLOCK_N], 0x100000000, tl.int64) + (low - i.to(tl.int64))
        key = tl.where(in_n, key, tl.full([BLOCK_N], -(2**63), tl.int64))  # padding: last
        pos = low - (tl.sort(key, descending=True) & low)  # the entries' positions, ranked
        ids = tl.load(ret + r * n + pos, mask=in_n, other=-1)
        tl.store(ranked + r * n + i, ids, mask=in_n)
    has = in_n & (ids >= 0)
    sz = tl.load(sizes + r * C + ids, mask=has, other=0).to(tl.int64)
    over = (sz > 0) & (tl.cumsum(sz, 0) > cap_tokens)
    valid = (sz > 0) & ~over
    st = tl.load(stamp_row + ids, mask=valid, other=-1)
    hit = valid & (st >= 0)
    miss = valid & ~hit
    tl.debug_barrier()
    tl.store(stamp_row + ids, base + n - i, mask=hit)  # touch: best-ranked ends most recent
    mi = miss.to(tl.int32)
    before = tl.cumsum(mi, 0) - mi
    n_miss = tl.sum(mi, 0)
    dest = r * n + tl.where(miss, before, n_miss + i - before)
    tl.store(miss_ids + dest, tl.where(miss, ids, -1), mask=in_n)
    tl.store(miss_rank + dest, tl.where(miss, i, n), mask=in_n)
    tl.store(miss_sizes + dest, tl.where(miss, sz, 0), mask=in_n)
    tl.store(out_sizes + r * n + i, sz, mask=in_n)
    tl.store(out_overflow + r * n + i, over.to(tl.int8), mask=in_n)
    tl.store(out_overflow_ids + r * n + i, tl.where(over, ids, -1), mask=in_n)
    tl.store(out_valid + r * n + i, valid.to(tl.int8), mask=in_n)
    tl.store(out_hit + r * n + i, hit.to(tl.int8), mask=in_n)
    tl.store(out_miss + r * n + i, miss.to(tl.int8), mask=in_n)
    n_hit = tl.sum(hit.to(tl.int64), 0)
    tl.store(hits_ctr + r, hits_before + n_hit)  # after the barrier above
    tl.store(misses_ctr + r, misses_before + n_miss)
    tl.atomic_add(totals + 0, n_hit)
    tl.atomic_add(totals + 1, n_miss.to(tl.int64))
    tl.atomic_add(totals + 5, tl.sum(over.to(tl.int64), 0))
    tl.atomic_add(totals + 6, tl.sum(tl.where(valid, sz, 0), 0))
    tl.debug_barrier()
    p = tl.arange(0, BLOCK_P)
    in_p = p < P1
    own = tl.load(owner + r * P1 + p, mask=in_p, other=-1)
    own_st = tl.load(stamp_row + own, mask=own >= 0, other=-1)
    sel = (own >= 0) & (own_st >= base)  # pages of this step's hits (stamps >= base)
    si = sel.to(tl.int32)
    sb = tl.cumsum(si, 0) - si
    n_sel = tl.sum(si, 0)
    pos = tl.where(sel, sb, n_sel + p - sb)
    f = tl.load(fillp + r * P1 + p, mask=in_p, other=0)
    keep = in_p & (pos < W)
    tl.store(take + r * W + pos, p.to(tl.int64), mask=keep)
    tl.store(take_fill + r * W + pos, tl.where(sel, f, 0), mask=keep)
    for w0 in range(P1, W, BLOCK_P):  # a table wider than the pages: the rest lists page 0
        tl.store(take + r * W + w0 + p, tl.zeros([BLOCK_P], tl.int64), mask=w0 + p < W)
        tl.store(take_fill + r * W + w0 + p, tl.zeros([BLOCK_P], tl.int64), mask=w0 + p < W)
    tl.store(hit_count + r, tl.minimum(n_sel, W).to(tl.int64))
    tl.store(count + r, tl.minimum(n_sel, W).to(tl.int64))


@triton.jit
def admit_kernel(
    miss_ids, miss_rank, miss_sizes, miss_off, stamp, owner, fillp, clock, scratch,
    evict_ctr, totals, run_src, run_src_v, run_dst, run_rows,
    tab_k, tab_v, take, take_fill, count, rest_ids,
    n, C, P1, M, S, CT, W, SW,
    PT: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_S: tl.constexpr, DIRECT: tl.constexpr, LEFT: tl.constexpr,
):  # fmt: skip
    """Evict whole least-recent clusters, place admitted misses (rank order, while they fit)
    into free pages, stamp them; writes one copy run per placed page (SW run slots per row).
    DIRECT: the runs read the source through its cluster table (tab_k/tab_v: element offset
    of each cluster), the placed pages are appended to the hit-page table and the misses left
    over (not admitted) are listed in `rest_ids` for the packed fetch. LEFT (with DIRECT): the
    left-over misses' pages are appended too, as the scratch page (P1 - 1) with their source
    runs (slots after the admitted ones, 0 rows to copy): attended in place, never cached."""
    _admit_row(
        tl.program_id(0).to(tl.int64), miss_ids, miss_rank, miss_sizes, miss_off, stamp, owner,
        fillp, clock, scratch, evict_ctr, totals, run_src, run_src_v, run_dst, run_rows, tab_k,
        tab_v, take, take_fill, count, rest_ids, n, C, P1, M, S, CT, W, SW, PT, D, BLOCK_N,
        BLOCK_P, BLOCK_S, DIRECT, LEFT,
    )  # fmt: skip


@triton.jit
def _admit_row(
    r, miss_ids, miss_rank, miss_sizes, miss_off, stamp, owner, fillp, clock, scratch,
    evict_ctr, totals, run_src, run_src_v, run_dst, run_rows,
    tab_k, tab_v, take, take_fill, count, rest_ids,
    n, C, P1, M, S, CT, W, SW,
    PT: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_S: tl.constexpr, DIRECT: tl.constexpr, LEFT: tl.constexpr,
):  # fmt: skip
    """admit_kernel's work for row r (int64)."""
    stamp_row = stamp + r * (C + 1)
    own_row = owner + r * P1
    base = tl.load(clock)
    evicted_before = tl.load(evict_ctr + r)
    c0 = 0
    if DIRECT:
        c0 = tl.load(count + r)  # hit pages already in the page table
    j = tl.arange(0, BLOCK_N)
    in_n = j < n
    mid = tl.load(miss_ids + r * n + j, mask=in_n, other=-1)
    is_m = mid >= 0
    msz = tl.load(miss_sizes + r * n + j, mask=in_n, other=0)
    mrank = tl.load(miss_rank + r * n + j, mask=in_n, other=0)
    mp = tl.where(is_m, (msz + PT - 1) // PT, 0)
    cum = tl.cumsum(mp, 0)
    p = tl.arange(0, BLOCK_P)
    in_p = p < P1
    own = tl.load(own_row + p, mask=in_p, other=-2)
    own_st = tl.load(stamp_row + own, mask=own >= 0, other=-1)
    evictable = (own >= 0) & (own_st < base)  # hits were touched by plan_kernel
    n_free = tl.sum((own == -1).to(tl.int64), 0)
    fits = is_m & (cum <= n_free + tl.sum(evictable.to(tl.int64), 0))
    adm_pages = tl.sum(tl.where(fits, mp, 0), 0)
    need = tl.maximum(adm_pages - n_free, 0)
    gone, evicted = _evict(stamp_row, own_row, p, own, own_st, evictable, need, base, BLOCK_P)
    # free list (page order) and cluster starts, in slot space, through the scratch row
    free = in_p & ((own == -1) | gone)
    fi = free.to(tl.int32)
    frank = tl.cumsum(fi, 0) - fi
    scr = scratch + r * S
    listed = fits
    n_slots = adm_pages
    if LEFT:  # the left-over misses' pages follow the admitted ones in slot order
        listed = is_m
        n_slots = tl.sum(tl.where(is_m, mp, 0), 0)
    tl.store(scr + frank, p.to(tl.int64), mask=free & (frank < adm_pages))
    s = tl.arange(0, BLOCK_S)  # slot index
    ok = s < n_slots
    tl.store(scr + BLOCK_P + s, tl.zeros([BLOCK_S], tl.int64), mask=ok)
    tl.store(scr + BLOCK_P + BLOCK_S + j, cum - mp, mask=in_n)
    tl.debug_barrier()
    tl.store(scr + BLOCK_P + cum - mp, tl.full([BLOCK_N], 1, tl.int64),
             mask=listed & (cum - mp < BLOCK_S))  # fmt: skip
    tl.debug_barrier()
    adm = s < adm_pages
    which = tl.maximum(tl.cumsum(tl.load(scr + BLOCK_P + s, mask=ok, other=0), 0) - 1, 0)
    page = tl.load(scr + s, mask=adm, other=P1 - 1)  # left over: the scratch page
    start = tl.load(scr + BLOCK_P + BLOCK_S + which, mask=ok, other=0)
    w_size = tl.load(miss_sizes + r * n + which, mask=ok, other=0)
    w_id = tl.load(miss_ids + r * n + which, mask=ok, other=-1)
    w_off = tl.load(miss_off + r * (n + 1) + which, mask=ok, other=0)
    page_in = s - start
    pf = tl.minimum(tl.maximum(w_size - page_in * PT, 0), PT)
    tl.store(own_row + page, w_id, mask=adm)
    tl.store(fillp + r * P1 + page, pf, mask=adm)
    in_s = s < SW
    if DIRECT:
        w_tk = tl.load(tab_k + r * CT + w_id, mask=ok, other=0)
        w_tv = tl.load(tab_v + r * CT + w_id, mask=ok, other=0)
        tl.store(run_src + r * SW + s, w_tk + page_in * PT * D, mask=in_s)
        tl.store(run_src_v + r * SW + s, w_tv + page_in * PT * D, mask=in_s)
        at = c0 + s
        tl.store(take + r * W + at, page, mask=ok & (at < W))
        tl.store(take_fill + r * W + at, pf, mask=ok & (at < W))
        tl.store(count + r, tl.minimum(c0 + n_slots, W))
    else:
        src = (r * M + w_off + page_in * PT) * D
        tl.store(run_src + r * SW + s, src, mask=in_s)
        tl.store(run_src_v + r * SW + s, src, mask=in_s)
    tl.store(run_dst + r * SW + s, ((r * P1 + page) * PT) * D, mask=in_s)
    tl.store(run_rows + r * SW + s, tl.where(adm, pf, 0), mask=in_s)
    tl.store(stamp_row + mid, base + n - mrank, mask=fits)
    n_adm = tl.sum(fits.to(tl.int64), 0)
    if DIRECT:  # misses are compacted first and admitted as a prefix: the rest shift down
        tl.store(rest_ids + r * n + j - n_adm, mid, mask=in_n & (j >= n_adm))
        none = tl.full([BLOCK_N], -1, tl.int64)
        tl.store(rest_ids + r * n + j, none, mask=in_n & (j >= n - n_adm))
    tl.store(evict_ctr + r, evicted_before + evicted)
    tl.atomic_add(totals + 2, n_adm)
    tl.atomic_add(totals + 3, tl.sum(is_m.to(tl.int64), 0) - n_adm)
    tl.atomic_add(totals + 4, evicted)


@triton.jit
def _evict(stamp_row, own_row, p, own, own_st, evictable, need, base, BLOCK_P: tl.constexpr):
    """Free whole least-recent clusters until `need` pages are free: (gone [BLOCK_P] pages
    freed, evicted clusters). The smallest stamp T with at least `need` evictable pages
    stamped <= T (stamps are unique per cluster, so this evicts least-recent clusters until
    enough pages are free), by bisection between the evictable stamps' extremes
    (count(<= lo) < need <= count(<= hi)); a stamp that counts exactly `need` ends it early
    (a smaller T would select the same pages)."""
    lo = tl.min(tl.where(evictable, own_st, base), 0) - 1
    hi = tl.max(tl.where(evictable, own_st, -1), 0)
    while (need > 0) & (hi - lo > 1):
        m = lo + (hi - lo) // 2
        got = tl.sum((evictable & (own_st <= m)).to(tl.int64), 0)
        enough = got >= need
        hi = tl.where(enough, m, hi)
        lo = tl.where(got == need, m - 1, tl.where(enough, lo, m))
    gone = evictable & (own_st <= hi) & (need > 0)
    # count evicted clusters: one page per cluster wins a scatter of its page index
    tl.store(stamp_row + own, -(p.to(tl.int64) + 2), mask=gone)
    tl.debug_barrier()
    winner = tl.load(stamp_row + own, mask=gone, other=0) == -(p.to(tl.int64) + 2)
    evicted = tl.sum((gone & winner).to(tl.int64), 0)
    tl.debug_barrier()
    tl.store(stamp_row + own, tl.full([BLOCK_P], -1, tl.int64), mask=gone)
    tl.store(own_row + p, tl.full([BLOCK_P], -1, tl.int64), mask=gone)
    return gone, evicted
