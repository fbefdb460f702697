"""Triton kernels of rank.py (imported only when Triton runs)."""

from __future__ import annotations

import triton
import triton.language as tl

_INF_BITS = tl.constexpr(0x7F800000)  # bits of +inf: every non-negative finite float32 is below


@triton.jit
def logits_kernel(
    q_ptr, c_ptr, sizes_ptr, z_ptr, pm_ptr, pl_ptr, C, NB, scale,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """z[r, g, c] = q[r, g] . centroid[r, c] * scale (-inf if empty) and, per block, the max
    and sum of exp(z - max) of each query head (one tensor-core product per block)."""
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
    ).to(q_ptr.dtype.element_ty)  # [BLOCK_C, D]; empty clusters are not read; fp8 widened
    q = tl.load(
        q_ptr + (r * G + offs_g[:, None]) * D + offs_d[None, :], mask=offs_g[:, None] < G, other=0.0
    )  # [GP, D]
    z = tl.dot(q, tl.trans(cent), input_precision="ieee") * scale  # [GP, BLOCK_C]
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
    G: tl.constexpr, BLOCK: tl.constexpr, BLOCK_NB: tl.constexpr,
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
    valid = bits >= 0
    lo1 = _kth_largest(bits, valid, K1)  # largest T with count(bits >= T) >= K1
    lo2 = _kth_largest(bits, valid, K2)
    eq1 = bits == lo1
    eq2 = bits == lo2
    need1 = K1 - tl.sum((bits > lo1).to(tl.int32), axis=0)
    need2 = K2 - tl.sum((bits > lo2).to(tl.int32), axis=0)
    rank1 = tl.cumsum(eq1.to(tl.int32), axis=0) - eq1.to(tl.int32)
    rank2 = tl.cumsum(eq2.to(tl.int32), axis=0) - eq2.to(tl.int32)
    sel1 = (bits > lo1) | (eq1 & (rank1 < need1))
    sel2 = (bits > lo2) | (eq2 & (rank2 < need2))
    slot = tl.cumsum(sel1.to(tl.int32), axis=0) - 1
    tl.store(ret_ptr + r.to(tl.int64) * K1 + slot, offs.to(tl.int64), mask=sel1)
    tl.store(rets_ptr + r.to(tl.int64) * K1 + slot, score, mask=sel1)
    est = sel2 & ~sel1
    tl.store(est_ptr + r.to(tl.int64) * C + offs, est.to(tl.int8), mask=inside)
    slot2 = tl.cumsum(est.to(tl.int32), axis=0) - 1
    tl.store(est_ids_ptr + r.to(tl.int64) * (K2 - K1) + slot2, offs.to(tl.int64), mask=est)


@triton.jit
def _kth_largest(bits, valid, K):
    """The K-th largest of the valid non-negative int32 `bits` (the largest T with
    count(valid & bits >= T) >= K, 1 <= K <= count(valid)): four 8-bit radix passes, each one
    histogram of the candidates still tied on the digits chosen so far."""
    bins = tl.arange(0, 256)
    cand = valid
    need = K
    prefix = tl.full([], 0, tl.int32)
    for p in tl.static_range(4):
        digit = (bits >> (24 - 8 * p)) & 0xFF
        hist = tl.histogram(digit, 256, mask=cand)  # [256] candidates per digit value
        above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0)  # candidates with a larger digit
        best = tl.max(tl.where(above + hist >= need, bins, -1), axis=0)
        need -= tl.sum(tl.where(bins == best, above, 0), axis=0)
        prefix = prefix | (best << (24 - 8 * p))
        cand = cand & (digit == best)
    return prefix
