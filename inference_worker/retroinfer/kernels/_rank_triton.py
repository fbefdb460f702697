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
    G: tl.constexpr, BLOCK: tl.constexpr, BLOCK_NB: tl.constexpr, ARITY: tl.constexpr,
    STEPS: tl.constexpr,
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
    # the largest T with count(bits >= T) >= K, for K1 and K2 at once
    if ARITY == 2:
        lo1, lo2 = _bisect2(bits, K1, K2, STEPS)
    elif ARITY == 4:
        lo1, lo2 = _quarter2(bits, K1, K2, STEPS)
    elif ARITY == 256:
        lo1, lo2 = _radix(bits, K1, K2)
    else:
        lo1, lo2 = _search(bits, K1, K2, ARITY, STEPS)
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
def _add2(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


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


@triton.jit
def _quarter2(bits, K1, K2, STEPS: tl.constexpr):
    """4-ary search for both thresholds at the cost of a bisection step: per step each K's
    interval is cut at three thresholds, and the three counts travel packed in one int64 (16
    bits each: a row has at most 32,768 elements), so a step is still one two-operand sum.
    Same invariant and early exit as _bisect2 (a threshold that counts exactly K ends that K's
    search). About half the steps of the bisection; bounded by STEPS + 1 all the same."""
    lo1, hi1 = _row_range(bits)
    lo2, hi2 = _row_range(bits)
    step = tl.zeros([], tl.int32)
    while ((lo1 < hi1) | (lo2 < hi2)) & (step <= STEPS):
        step += 1
        a1, b1, c1 = _cuts(lo1, hi1)
        a2, b2, c2 = _cuts(lo2, hi2)
        p1, p2 = tl.reduce((_count3(bits, a1, b1, c1), _count3(bits, a2, b2, c2)), 0, _add2)
        lo1, hi1 = _narrow(lo1, hi1, K1, p1, a1, b1, c1)
        lo2, hi2 = _narrow(lo2, hi2, K2, p2, a2, b2, c2)
    return lo1.to(tl.int32), lo2.to(tl.int32)


@triton.jit
def _cuts(lo, hi):
    """Three thresholds a <= b <= c in (lo, hi] (lo < hi) at about its quarters."""
    q = hi - lo
    return lo + (q + 3) // 4, lo + (2 * q + 3) // 4, lo + (3 * q + 3) // 4


@triton.jit
def _count3(bits, a, b, c):
    """Per element, its counts at the thresholds a, b, c packed into 16-bit fields."""
    ca = (bits >= a.to(tl.int32)).to(tl.int64)
    cb = (bits >= b.to(tl.int32)).to(tl.int64)
    cc = (bits >= c.to(tl.int32)).to(tl.int64)
    return ca + (cb << 16) + (cc << 32)


@triton.jit
def _narrow(lo, hi, K, packed, a, b, c):
    """The interval after counting at a <= b <= c (counts non-increasing): lo moves to the
    largest threshold counting >= K, hi to one below the smallest counting < K; a threshold
    that counts exactly K becomes both bounds."""
    ca = packed & 0xFFFF
    cb = (packed >> 16) & 0xFFFF
    cc = (packed >> 32) & 0xFFFF
    new_lo = tl.where(cc >= K, c, tl.where(cb >= K, b, tl.where(ca >= K, a, lo)))
    at_lo = tl.where(cc >= K, cc, tl.where(cb >= K, cb, tl.where(ca >= K, ca, -1)))
    new_hi = tl.where(ca < K, a - 1, tl.where(cb < K, b - 1, tl.where(cc < K, c - 1, hi)))
    new_hi = tl.where(at_lo == K, new_lo, new_hi)
    run = lo < hi
    return tl.where(run, new_lo, lo), tl.where(run, new_hi, hi)


@triton.jit
def _radix(bits, K1, K2):
    """Radix select, a byte per pass from the top (4 passes): a histogram of the next byte of
    the elements that share the bytes found so far gives the K-th largest element's byte.
    The result is the K-th largest bit pattern itself (the largest T with count(bits >= T)
    >= K). bits < 0: padding, never counted."""
    bins = tl.arange(0, 256)
    t1 = tl.zeros([], tl.int32)
    t2 = tl.zeros([], tl.int32)
    need1 = K1 + t1  # K-th largest among the elements that share the prefix
    need2 = K2 + t2
    real = bits >= 0
    for p in tl.static_range(4):
        shift = 24 - 8 * p
        digit = (bits >> shift) & 0xFF
        m1 = real
        m2 = real
        if p > 0:
            m1 = real & ((bits >> (shift + 8)) == (t1 >> (shift + 8)))
            m2 = real & ((bits >> (shift + 8)) == (t2 >> (shift + 8)))
        d1, need1 = _top_digit(tl.histogram(digit, 256, mask=m1), need1, bins)
        d2, need2 = _top_digit(tl.histogram(digit, 256, mask=m2), need2, bins)
        t1 = t1 | (d1 << shift)
        t2 = t2 | (d2 << shift)
    return t1, t2


@triton.jit
def _top_digit(hist, need, bins):
    """The largest digit d with count(digit >= d) >= need, and need less the count above d."""
    ge = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist  # [256] elements with digit >= d
    d = tl.max(tl.where(ge >= need, bins, 0), 0)
    above = tl.sum(tl.where(bins > d, hist, 0), 0)
    return d, need - above


@triton.jit
def _search(bits, K1, K2, ARITY: tl.constexpr, STEPS: tl.constexpr):
    """An ARITY-ary search on the bit patterns; each step counts ARITY thresholds per K in one
    reduction over a [BLOCK, 2 * ARITY] comparison."""
    col = tl.arange(0, 2 * ARITY)
    second = col >= ARITY  # columns of K2
    j = (col % ARITY).to(tl.int64)
    need = tl.where(second, K2, K1)
    lo = tl.zeros([2 * ARITY], tl.int64)  # per column: its K's interval, [lo, hi]
    hi = tl.full([2 * ARITY], _INF_BITS, tl.int64)
    for _ in range(STEPS):
        t = lo + ((hi - lo + 1) * j + ARITY - 1) // ARITY  # [2A] thresholds; j = 0 gives lo
        count = tl.sum((bits[:, None] >= t.to(tl.int32)[None, :]).to(tl.int32), axis=0)
        ok = count >= need
        lo_new1 = tl.max(tl.where(ok & ~second, t, -1), axis=0)
        lo_new2 = tl.max(tl.where(ok & second, t, -1), axis=0)
        cut = tl.where(ok, hi, t - 1)  # the first threshold that fails bounds the interval
        hi_new1 = tl.min(tl.where(second, _INF_BITS, cut), axis=0)
        hi_new2 = tl.min(tl.where(second, cut, _INF_BITS), axis=0)
        lo = tl.where(second, lo_new2, lo_new1)
        hi = tl.where(second, hi_new2, hi_new1)
    lo1 = tl.max(tl.where(second, -1, lo), axis=0).to(tl.int32)
    lo2 = tl.max(tl.where(second, lo, -1), axis=0).to(tl.int32)
    return lo1, lo2
