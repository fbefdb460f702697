"""Triton kernel of gather.py (imported only when Triton runs)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def copy_runs_kernel(
    src_k, src_v, dst_k, dst_v, src_off_k, src_off_v, dst_off, rows_ptr, E,
    D: tl.constexpr, BLOCK: tl.constexpr, RUNS: tl.constexpr,
):  # fmt: skip
    """RUNS consecutive runs per program, BLOCK rows per tile. The runs' metadata is loaded
    in one round trip; an empty run (most admission runs are empty pages) moves no data."""
    i = tl.arange(0, RUNS)
    e = tl.program_id(0).to(tl.int64) * RUNS + i
    in_e = e < E
    n_all = tl.load(rows_ptr + e, mask=in_e, other=0)
    sk_all = tl.load(src_off_k + e, mask=in_e, other=0)
    sv_all = tl.load(src_off_v + e, mask=in_e, other=0)
    dd_all = tl.load(dst_off + e, mask=in_e, other=0)
    offs_d = tl.arange(0, D)
    for j in tl.static_range(RUNS):
        n = tl.sum(tl.where(i == j, n_all, 0), axis=0)
        sk = tl.sum(tl.where(i == j, sk_all, 0), axis=0)
        sv = tl.sum(tl.where(i == j, sv_all, 0), axis=0)
        dd = tl.sum(tl.where(i == j, dd_all, 0), axis=0)
        for r0 in range(0, n, BLOCK):
            rr = r0 + tl.arange(0, BLOCK)
            ok = (rr < n)[:, None]
            within = rr.to(tl.int64)[:, None] * D + offs_d[None, :]
            k = tl.load(src_k + sk + within, mask=ok)
            v = tl.load(src_v + sv + within, mask=ok)
            tl.store(dst_k + dd + within, k.to(dst_k.dtype.element_ty), mask=ok)
            tl.store(dst_v + dd + within, v.to(dst_v.dtype.element_ty), mask=ok)


@triton.jit
def fetch_runs_kernel(
    ids, tab_k, tab_v, size_tab, offsets, src_k, src_v, dst, rows, n, C, M,
    D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per row: the packed offsets of the requested clusters and their copy runs."""
    r = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_N)
    in_n = i < n
    cid = tl.load(ids + r * n + i, mask=in_n, other=-1)
    valid = in_n & (cid >= 0)
    sz = tl.load(size_tab + r * C + cid, mask=valid, other=0).to(tl.int64)
    cum = tl.cumsum(sz, 0)
    tl.store(offsets + r * (n + 1) + i, cum * 0, mask=i == 0)
    tl.store(offsets + r * (n + 1) + 1 + i, cum, mask=in_n)
    tl.store(src_k + r * n + i, tl.load(tab_k + r * C + cid, mask=valid, other=0), mask=in_n)
    tl.store(src_v + r * n + i, tl.load(tab_v + r * C + cid, mask=valid, other=0), mask=in_n)
    tl.store(dst + r * n + i, (r * M + cum - sz) * D, mask=in_n)
    tl.store(rows + r * n + i, sz, mask=in_n)
