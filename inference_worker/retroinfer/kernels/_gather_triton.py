"""Triton kernel of gather.py (imported only when Triton runs)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def copy_runs_kernel(
    src_k, src_v, dst_k, dst_v, src_off_k, src_off_v, dst_off, rows_ptr, E,
    D: tl.constexpr, BLOCK: tl.constexpr, RUNS: tl.constexpr,
):  # fmt: skip
    """RUNS consecutive runs per program, BLOCK rows per tile."""
    offs_d = tl.arange(0, D)
    for i in tl.static_range(RUNS):
        e = tl.program_id(0) * RUNS + i
        if e < E:
            n = tl.load(rows_ptr + e)
            sk = tl.load(src_off_k + e)
            sv = tl.load(src_off_v + e)
            dd = tl.load(dst_off + e)
            for r0 in range(0, n, BLOCK):
                rr = r0 + tl.arange(0, BLOCK)
                ok = (rr < n)[:, None]
                within = rr.to(tl.int64)[:, None] * D + offs_d[None, :]
                k = tl.load(src_k + sk + within, mask=ok)
                v = tl.load(src_v + sv + within, mask=ok)
                tl.store(dst_k + dd + within, k.to(dst_k.dtype.element_ty), mask=ok)
                tl.store(dst_v + dd + within, v.to(dst_v.dtype.element_ty), mask=ok)
