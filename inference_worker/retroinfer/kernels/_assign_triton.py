"""Triton kernels of assign.py and cluster_sums.py (imported only when Triton runs).

Loops whose bound is a runtime value take two forms: `tl.range` (software-pipelined) when
compiled, a `while` loop under TRITON_INTERPRET=1 (the interpreter cannot index a range with a
runtime scalar); both call the same tile function.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _score_tile(
    x, c_base, c0, C, best, best_i, offs_d, D: tl.constexpr, BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Scores of one centroid tile; fold its row max / first argmax into (best, best_i).
    UPCAST: exact fp32 products of the rounded operands (the interpreter's bf16 dot is wrong)."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    ptrs = c_base + offs_c[:, None] * D + offs_d[None, :]
    if EVEN_C:
        cent = tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)  # [BLOCK_C, BLOCK_D]
    else:
        cent = tl.load(ptrs, mask=(offs_c[:, None] < C) & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        s = tl.dot(x.to(tl.float32), tl.trans(cent.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(x, tl.trans(cent), input_precision=PRECISION)  # [BLOCK_N, BLOCK_C] fp32
    if not EVEN_C:
        s = tl.where((offs_c < C)[None, :], s, float("-inf"))
    m, idx = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
    better = m > best  # strict: an earlier tile wins ties (torch.argmax's first index)
    return tl.where(better, m, best), tl.where(better, c0 + idx, best_i)


@triton.jit
def _round_bf16(x):
    """fp32 -> fp32 rounded to nearest-even bfloat16 (the interpreter's cast truncates)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def assign_kernel(
    x_ptr, start_ptr, c_ptr, shift_ptr, len_ptr, out_ptr, N, C, N_SEG,
    HAS_SHIFT: tl.constexpr, HAS_LEN: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """labels[r, n] = argmax_c <x_r[n] (- shift[r // N_SEG]), c[r, c]> for BLOCK_N tokens of row
    r, whose token n is x row start[r] + n (rows of D elements: the product start * D keeps the
    alignment visible to the compiler); tokens at n >= len[r] (or N) get label C.
    The [N, C] scores exist one tile at a time."""
    pid_n = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    valid = offs_n < N
    if HAS_LEN:
        valid = offs_n < tl.load(len_ptr + r)
    x = tl.load(
        x_ptr + (tl.load(start_ptr + r) + offs_n[:, None]) * D + offs_d[None, :],
        mask=valid[:, None] & (offs_d[None, :] < D),
        other=0.0,
    )  # [BLOCK_N, BLOCK_D]
    if HAS_SHIFT:
        sh = tl.load(shift_ptr + (r // N_SEG) * D + offs_d, mask=offs_d < D, other=0.0)
        x = x.to(tl.float32) - sh[None, :]
    if INTERPRET and c_ptr.dtype.element_ty == tl.bfloat16:
        x = _round_bf16(x.to(tl.float32))
    x = x.to(c_ptr.dtype.element_ty)
    c_base = c_ptr + r * C * D
    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    best_i = tl.zeros([BLOCK_N], dtype=tl.int32)
    if INTERPRET:
        c0 = 0
        while c0 < C:
            best, best_i = _score_tile(
                x, c_base, c0, C, best, best_i, offs_d, D, BLOCK_C, EVEN_C, PRECISION, True
            )
            c0 += BLOCK_C
    else:
        for c0 in tl.range(0, C, BLOCK_C):
            best, best_i = _score_tile(
                x, c_base, c0, C, best, best_i, offs_d, D, BLOCK_C, EVEN_C, PRECISION, False
            )
    tl.store(out_ptr + r * N + offs_n, tl.where(valid, best_i, C), mask=offs_n < N)


@triton.jit
def _sum_rows(
    x_ptr, row0, order_ptr, sorted_ptr, sh, acc, r, N, i0, end, offs_d,
    HAS_SHIFT: tl.constexpr, WRITE_SORTED: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Add members i0 .. i0 + BLOCK (of the sorted order, below `end`) to acc [BLOCK, BLOCK_D]."""
    offs_i = i0 + tl.arange(0, BLOCK)
    ok = offs_i < end
    tok = tl.load(order_ptr + r * N + offs_i, mask=ok, other=0)
    m2 = ok[:, None] & (offs_d[None, :] < D)
    rows = tl.load(x_ptr + (row0 + tok[:, None]) * D + offs_d[None, :], mask=m2, other=0.0)
    if WRITE_SORTED:
        tl.store(sorted_ptr + (r * N + offs_i[:, None]) * D + offs_d[None, :], rows, mask=m2)
    v = rows.to(tl.float32)
    if HAS_SHIFT:
        v = tl.where(m2, v - sh[None, :], 0.0)
    return acc + v


@triton.jit
def cluster_sums_kernel(
    x_ptr, start_ptr, order_ptr, off_ptr, shift_ptr, prev_ptr, out_ptr, sorted_ptr, N, C, N_SEG,
    HAS_SHIFT: tl.constexpr, NORMALIZE: tl.constexpr, WRITE_SORTED: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """out[r, c] = sum of (x_r[order[r, i]] - shift[r // N_SEG]) over i in offsets[r, c] ..
    offsets[r, c + 1] in fp32 (token t of row r is x row start[r] + t); NORMALIZE: out =
    sum / max(|sum|, 1e-12), or prev[r, c] for an empty cluster.
    WRITE_SORTED also copies the member rows to sorted[r, i] (cluster-major layout)."""
    c = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    start = tl.load(off_ptr + r * (C + 1) + c)
    end = tl.load(off_ptr + r * (C + 1) + c + 1)
    offs_d = tl.arange(0, BLOCK_D)
    sh = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_SHIFT:
        sh = tl.load(shift_ptr + (r // N_SEG) * D + offs_d, mask=offs_d < D, other=0.0)
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    row0 = tl.load(start_ptr + r)
    if INTERPRET:
        i0 = start
        while i0 < end:
            acc = _sum_rows(
                x_ptr, row0, order_ptr, sorted_ptr, sh, acc, r, N, i0, end, offs_d,
                HAS_SHIFT, WRITE_SORTED, D, BLOCK,
            )  # fmt: skip
            i0 += BLOCK
    else:
        for i0 in range(start, end, BLOCK):
            acc = _sum_rows(
                x_ptr, row0, order_ptr, sorted_ptr, sh, acc, r, N, i0, end, offs_d,
                HAS_SHIFT, WRITE_SORTED, D, BLOCK,
            )  # fmt: skip
    total = tl.sum(acc, axis=0)  # [BLOCK_D]
    dst = out_ptr + (r * C + c) * D + offs_d
    if NORMALIZE:
        norm = tl.sqrt(tl.sum(total * total, axis=0))
        fresh = total / tl.maximum(norm, 1e-12)
        prev = tl.load(prev_ptr + (r * C + c) * D + offs_d, mask=offs_d < D, other=0.0)
        total = tl.where(end > start, fresh, prev)
    tl.store(dst, total, mask=offs_d < D)
