"""Triton kernels of step_io.py (imported only when Triton runs)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def token_kernel(
    k_src, v_src, k_dst, v_dst, pos_ptr, cap, q_src, q_dst,
    HAS_Q: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
):  # fmt: skip
    """One program per KV row r: the new token's K/V into steady[r, pos[r]] and (HAS_Q) the G
    query rows of r into q_dst."""
    r = tl.program_id(0).to(tl.int64)
    p = tl.load(pos_ptr + r).to(tl.int64)
    offs = tl.arange(0, DP)
    in_d = offs < D
    at = (r * cap + p) * D + offs
    k = tl.load(k_src + r * D + offs, mask=in_d)
    v = tl.load(v_src + r * D + offs, mask=in_d)
    tl.store(k_dst + at, k.to(k_dst.dtype.element_ty), mask=in_d)
    tl.store(v_dst + at, v.to(v_dst.dtype.element_ty), mask=in_d)
    if HAS_Q:
        g = tl.arange(0, GP)
        rows = (r * G + g)[:, None] * D + offs[None, :]
        ok = (g < G)[:, None] & in_d[None, :]
        x = tl.load(q_src + rows, mask=ok)
        tl.store(q_dst + rows, x.to(q_dst.dtype.element_ty), mask=ok)


@triton.jit
def unload_kernel(out_src, out_dst, c_src, c_dst, N, NC, BLOCK: tl.constexpr, CB: tl.constexpr):
    """out_dst = out_src cast to its dtype, BLOCK elements per program; program 0 also copies
    the NC counts."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(out_src + offs, mask=ok)
    tl.store(out_dst + offs, x.to(out_dst.dtype.element_ty), mask=ok)
    j = tl.arange(0, CB)
    first = (j < NC) & (pid == 0)
    tl.store(c_dst + j, tl.load(c_src + j, mask=first), mask=first)
