"""Triton kernels of rank.py (imported only when Triton runs)."""

from __future__ import annotations

import triton
import triton.language as tl

_INF_BITS = tl.constexpr(0x7F800000)  # bits of +inf: every non-negative finite float32 is below


@triton.jit
def logits_kernel(
    q_ptr, c_ptr, sizes_ptr, cs_ptr, z_ptr, pm_ptr, pl_ptr, C, NB, scale,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr,
    SCALED: tl.constexpr = False,
):  # fmt: skip
    """z[r, g, c] = q[r, g] . centroid[r, c] * scale (-inf if empty) and, per block, the max
    and sum of exp(z - max) of each query head (one tensor-core product per block). SCALED:
    int8 centroids, z is then multiplied by the centroid's scale cs[r, c]."""
    r = tl.program_id(0)
    blk = tl.program_id(1)
    offs_c = blk * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, D)
    offs_g = tl.arange(0, GP)
    in_c = offs_c < C
    row = r.to(tl.int64) * C
    size = tl.load(sizes_ptr + row + offs_c, mask=in_c, other=0)
    valid = in_c & (size > 0)
    cent = tl.load(
        c_ptr + (row + offs_c)[:, None] * D + offs_d[None, :], mask=valid[:, None], other=0.0
    ).to(q_ptr.dtype.element_ty)  # [BLOCK_C, D]; empty clusters are not read; fp8 / int8 widened
    q = tl.load(
        q_ptr + (r * G + offs_g[:, None]) * D + offs_d[None, :], mask=offs_g[:, None] < G, other=0.0
    )  # [GP, D]
    z = tl.dot(q, tl.trans(cent), input_precision="ieee") * scale  # [GP, BLOCK_C]
    if SCALED:
        cs = tl.load(cs_ptr + row + offs_c, mask=valid, other=0.0)  # [BLOCK_C] fp32
        z = z * cs[None, :]
    z = tl.where(valid[None, :], z, float("-inf"))
    in_g = offs_g < G
    tl.store(
        z_ptr + (r.to(tl.int64) * G + offs_g[:, None]) * C + offs_c[None, :],
        z,
        mask=in_g[:, None] & in_c[None, :],
    )
    mg = tl.max(z, axis=1)  # [GP]
    lg = tl.sum(tl.where(valid[None, :], tl.exp(z - mg[:, None]), 0.0), axis=1)
    tl.store(pm_ptr + (r * G + offs_g) * NB + blk, mg, mask=in_g)
    tl.store(pl_ptr + (r * G + offs_g) * NB + blk, lg, mask=in_g)


@triton.jit
def select_kernel(
    z_ptr, pm_ptr, pl_ptr, ret_ptr, rets_ptr, est_ptr, est_ids_ptr, C, NB, K1, K2,
    G: tl.constexpr, BLOCK: tl.constexpr, BLOCK_NB: tl.constexpr, STEPS: tl.constexpr,
):  # fmt: skip
    """One row: group score, top-K1 ids (index order, with scores), the mask and the ids (index
    order) of ranks K1..K2-1. Ties at a threshold are taken in index order."""
    r = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    inside = offs < C
    offs_nb = tl.arange(0, BLOCK_NB)
    score = tl.zeros([BLOCK], dtype=tl.float32)
    for g in tl.static_range(G):
        pm = tl.load(pm_ptr + (r * G + g) * NB + offs_nb, mask=offs_nb < NB, other=float("-inf"))
        pl = tl.load(pl_ptr + (r * G + g) * NB + offs_nb, mask=offs_nb < NB, other=0.0)
        top = tl.max(pm, axis=0)
        top = tl.where(top == float("-inf"), 0.0, top)
        lse = top + tl.log(tl.sum(pl * tl.exp(pm - top), axis=0))
        zg = tl.load(z_ptr + (r.to(tl.int64) * G + g) * C + offs, mask=inside, other=float("-inf"))
        score += tl.where(zg == float("-inf"), 0.0, tl.exp(zg - lse))
    bits = score.to(tl.int32, bitcast=True)
    bits = tl.minimum(tl.maximum(bits, 0), _INF_BITS)  # NaN / -0.0 cannot break the counts
    bits = tl.where(inside, bits, -1)  # padding never counts
    lo1, lo2 = _bisect2(bits, K1, K2, STEPS)  # the largest T: count(bits >= T) >= K, per K
    # both thresholds' counts travel packed in one int32, 16 bits apiece (a row has at most
    # 32,768 elements): one reduction or scan serves the two
    eq1 = bits == lo1
    eq2 = bits == lo2
    above = tl.sum(_pack2(bits > lo1, bits > lo2), axis=0)
    need1 = K1 - (above & 0xFFFF)
    need2 = K2 - _high(above)
    eqs = _pack2(eq1, eq2)
    ranks = tl.cumsum(eqs, axis=0) - eqs  # ties before each element, per threshold
    sel1 = (bits > lo1) | (eq1 & ((ranks & 0xFFFF) < need1))
    sel2 = (bits > lo2) | (eq2 & (_high(ranks) < need2))
    est = sel2 & ~sel1
    slots = tl.cumsum(_pack2(sel1, est), axis=0)
    slot = (slots & 0xFFFF) - 1
    slot2 = _high(slots) - 1
    tl.store(ret_ptr + r.to(tl.int64) * K1 + slot, offs.to(tl.int64), mask=sel1)
    tl.store(rets_ptr + r.to(tl.int64) * K1 + slot, score, mask=sel1)
    tl.store(est_ptr + r.to(tl.int64) * C + offs, est.to(tl.int8), mask=inside)
    tl.store(est_ids_ptr + r.to(tl.int64) * (K2 - K1) + slot2, offs.to(tl.int64), mask=est)


@triton.jit
def _pack2(low, high):
    """Two boolean tensors as one int32: low in bits 0-15, high in bits 16-31."""
    return low.to(tl.int32) + (high.to(tl.int32) << 16)


@triton.jit
def _high(packed):
    """The high 16-bit field of _pack2 sums (up to 65,535: a sum of 32,768 sets the sign bit,
    which the mask drops)."""
    return (packed >> 16) & 0xFFFF


@triton.jit
def _row_range(bits):
    """The row's smallest and largest bit pattern (int64; bits < 0 is padding): the starting
    interval of both threshold searches."""
    low = tl.min(tl.where(bits >= 0, bits, _INF_BITS), axis=0).to(tl.int64)
    return low, tl.max(bits, axis=0).to(tl.int64)


@triton.jit
def _bisect2(bits, K1, K2, STEPS: tl.constexpr):
    """Bisection for both thresholds with scalar bounds: per step two comparisons per element
    and one sum of the two counts packed in an int32 (no 2-D tensor, no layout conversion, no
    small reductions).
    Invariant per K: count(bits >= lo) >= K and count(bits > hi) < K. The bounds start at the
    row's smallest and largest pattern, and a K is done as soon as a threshold counts exactly
    K (then lo = that threshold selects the same K elements as the K-th largest pattern does),
    so the loop stops after ~log2(range / gap at the K-th) steps instead of 31. Each step at
    least halves an interval of at most 2**31 patterns, so STEPS (31) steps always suffice; the
    loop is bounded by STEPS + 1 all the same (a wrong update cannot hang the GPU)."""
    lo1, hi1 = _row_range(bits)
    lo2, hi2 = _row_range(bits)
    step = tl.zeros([], tl.int32)
    while ((lo1 < hi1) | (lo2 < hi2)) & (step <= STEPS):
        step += 1
        t1 = lo1 + (hi1 - lo1 + 1) // 2  # in (lo, hi] while lo < hi
        t2 = lo2 + (hi2 - lo2 + 1) // 2
        both = tl.sum(_pack2(bits >= t1.to(tl.int32), bits >= t2.to(tl.int32)), axis=0)
        c1 = both & 0xFFFF
        c2 = _high(both)
        run1 = lo1 < hi1
        run2 = lo2 < hi2
        ok1 = c1 >= K1
        ok2 = c2 >= K2
        lo1 = tl.where(run1 & ok1, t1, lo1)
        hi1 = tl.where(run1, tl.where(c1 == K1, t1, tl.where(ok1, hi1, t1 - 1)), hi1)
        lo2 = tl.where(run2 & ok2, t2, lo2)
        hi2 = tl.where(run2, tl.where(c2 == K2, t2, tl.where(ok2, hi2, t2 - 1)), hi2)
    return lo1.to(tl.int32), lo2.to(tl.int32)
