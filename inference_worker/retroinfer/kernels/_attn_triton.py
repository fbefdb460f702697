"""Triton kernels of estimate.py and decode_attention.py (imported only when Triton runs).

A partial is (m, l, acc) per query head: running max, sum of weights, weighted value sum."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _online(s, vals, m, l, acc, weight):
    """Fold logits s [GP, N] (-inf = absent) with values vals [N, D] into a partial; weight
    [N] multiplies the denominator terms (cluster sizes for the estimation zone)."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l = l * alpha + tl.sum(p * weight[None, :], axis=1)
    if vals.dtype == tl.float32:  # fp32 value sums: 3-pass TF32 on tensor cores, ~fp32 accuracy
        acc = acc * alpha[:, None] + tl.dot(p, vals, input_precision="tf32x3")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(vals.dtype), vals)
    return m_new, l, acc


@triton.jit
def _estimate_split(
    z_ptr, ids_ptr, sizes_ptr, vs_ptr, r, split, N, C,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr, PREFETCH: tl.constexpr = False,
):  # fmt: skip
    """Entries [split * CHUNK, +CHUNK) of the row's estimated-cluster list (-1 = none).
    The sizes, logits and value sums of a tile are loaded side by side (one dependent load
    after the ids; empty clusters are masked after loading). PREFETCH: the next tile's ids are
    loaded before this tile is computed."""
    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, D)
    m = tl.full([GP], float("-inf"), tl.float32)
    l = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    row = r.to(tl.int64) * C
    ids_row = ids_ptr + r.to(tl.int64) * N
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, N)
    offs_b = tl.arange(0, BLOCK_C)
    nxt = tl.load(ids_row + start + offs_b, mask=start + offs_b < end, other=-1)
    for c0 in range(start, end, BLOCK_C):
        if PREFETCH:  # noqa: SIM108 (constexpr branches)
            ids = nxt
        else:
            ids = tl.load(ids_row + c0 + offs_b, mask=c0 + offs_b < end, other=-1)
        ok = ids >= 0
        safe = tl.maximum(ids, 0)  # -1 -> 0
        size = tl.load(sizes_ptr + row + safe, mask=ok, other=0)
        zt = tl.load(
            z_ptr + (r.to(tl.int64) * G + offs_g[:, None]) * C + safe[None, :],
            mask=(offs_g[:, None] < G) & ok[None, :],
            other=float("-inf"),
        )  # [GP, BLOCK_C]
        vs = tl.load(
            vs_ptr + (row + safe)[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0
        )  # [BLOCK_C, D]
        if PREFETCH:
            o_next = c0 + BLOCK_C + offs_b
            nxt = tl.load(ids_row + o_next, mask=o_next < end, other=-1)
        keep = size > 0
        zt = tl.where(keep[None, :], zt, float("-inf"))
        vs = tl.where(keep[:, None], vs, 0.0)
        m, l, acc = _online(zt, vs, m, l, acc, size.to(tl.float32))
    return m, l, acc


@triton.jit
def _store_partial(
    pm_ptr, pl_ptr, pacc_ptr, r, s, S, m, l, acc,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, SKIP_EMPTY: tl.constexpr = False,
):  # fmt: skip
    """SKIP_EMPTY: the acc of a head with no mass (m = -inf) is not written (the combine kernel
    does not read it): empty splits of the fixed-capacity graph grid cost 2 small stores."""
    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, D)
    base = (r.to(tl.int64) * S + s) * G
    tl.store(pm_ptr + base + offs_g, m, mask=offs_g < G)
    tl.store(pl_ptr + base + offs_g, l, mask=offs_g < G)
    keep = offs_g < G
    if SKIP_EMPTY:
        keep = keep & (m > float("-inf"))
    tl.store(pacc_ptr + (base + offs_g[:, None]) * D + offs_d[None, :], acc, mask=keep[:, None])


@triton.jit
def estimate_kernel(
    z_ptr, ids_ptr, sizes_ptr, vs_ptr, pm_ptr, pl_ptr, pacc_ptr, N, C, S,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr, PREFETCH: tl.constexpr = False,
):  # fmt: skip
    r = tl.program_id(0)
    s = tl.program_id(1)
    m, l, acc = _estimate_split(
        z_ptr, ids_ptr, sizes_ptr, vs_ptr, r, s, N, C, G, GP, D, CHUNK, BLOCK_C, PREFETCH
    )
    _store_partial(pm_ptr, pl_ptr, pacc_ptr, r, s, S, m, l, acc, G, GP, D)


@triton.jit
def _attend_rows(q, k_ptr, v_ptr, row_off, start, end, m, l, acc, scale,
                 D: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Exact attention over contiguous token rows [start, end) at element offset row_off."""
    offs_d = tl.arange(0, D)
    for t0 in range(start, end, BLOCK_N):
        offs_n = t0 + tl.arange(0, BLOCK_N)
        valid = offs_n < end
        ptrs = row_off + offs_n.to(tl.int64)[:, None] * D + offs_d[None, :]
        k = tl.load(k_ptr + ptrs, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + ptrs, mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m, l, acc = _online(s, v, m, l, acc, tl.full([BLOCK_N], 1.0, tl.float32))
    return m, l, acc


@triton.jit
def _page_meta(take_ptr, fill_ptr, off_k_ptr, off_v_ptr, row_w, row_c, p, p_end, lo,
               COPY_IN: tl.constexpr):  # fmt: skip
    """Per token of a tile: its page's number and fill, and (COPY_IN) the element offsets of
    the page's first source rows (slot p - lo of the admission runs, row offset row_c)."""
    in_p = p < p_end
    page = tl.load(take_ptr + row_w + p, mask=in_p, other=0)
    fill = tl.load(fill_ptr + row_w + p, mask=in_p, other=0)
    sk = page * 0
    sv = page * 0
    if COPY_IN:
        sk = tl.load(off_k_ptr + row_c + p - lo, mask=in_p, other=0)
        sv = tl.load(off_v_ptr + row_c + p - lo, mask=in_p, other=0)
    return page, fill, sk, sv


@triton.jit
def _attend_pages(q, k_ptr, v_ptr, take_ptr, fill_ptr, r, P1, W, p_start, p_end, m, l, acc,
                  scale, src_k, src_v, off_k_ptr, off_v_ptr, CP_W, lo,
                  D: tl.constexpr, PT: tl.constexpr, BLOCK_N: tl.constexpr,
                  PREFETCH: tl.constexpr = False, COPY_IN: tl.constexpr = False):  # fmt: skip
    """Exact attention over cache pages take[r, p_start:p_end] (fill[r, p] valid tokens).
    PREFETCH: the next tile's page metadata is loaded before this tile is computed. COPY_IN:
    the rows are read from the source (offsets off_k/off_v[r, p - lo], CP_W per row) and
    written into their pages on the way (the admission copy fused into the attention); the
    scratch page (P1 - 1) is not written (misses not admitted, attended in place)."""
    offs_d = tl.arange(0, D)
    pages_per_tile: tl.constexpr = BLOCK_N // PT
    offs_n = tl.arange(0, BLOCK_N)
    in_page = offs_n % PT
    row_w = r.to(tl.int64) * W
    row_p = r.to(tl.int64) * P1
    row_c = r.to(tl.int64) * CP_W
    page_n, fill_n, sk_n, sv_n = _page_meta(
        take_ptr, fill_ptr, off_k_ptr, off_v_ptr, row_w, row_c, p_start + offs_n // PT, p_end,
        lo, COPY_IN,
    )  # fmt: skip
    for p0 in range(p_start, p_end, pages_per_tile):
        p = p0 + offs_n // PT
        if PREFETCH:
            page, fill, sk, sv = page_n, fill_n, sk_n, sv_n
        else:
            page, fill, sk, sv = _page_meta(
                take_ptr, fill_ptr, off_k_ptr, off_v_ptr, row_w, row_c, p, p_end, lo, COPY_IN
            )
        valid = (p < p_end) & (in_page < fill)
        tok = (row_p + page) * PT + in_page
        ptrs = tok[:, None] * D + offs_d[None, :]
        if COPY_IN:
            k = tl.load(src_k + sk[:, None] + in_page[:, None] * D + offs_d[None, :],
                        mask=valid[:, None], other=0.0).to(k_ptr.dtype.element_ty)  # fmt: skip
            v = tl.load(src_v + sv[:, None] + in_page[:, None] * D + offs_d[None, :],
                        mask=valid[:, None], other=0.0).to(v_ptr.dtype.element_ty)  # fmt: skip
            keep = valid & (page < P1 - 1)  # the scratch page: attended, not written
            tl.store(k_ptr + ptrs, k, mask=keep[:, None])
            tl.store(v_ptr + ptrs, v, mask=keep[:, None])
        else:
            k = tl.load(k_ptr + ptrs, mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + ptrs, mask=valid[:, None], other=0.0)
        if PREFETCH:
            page_n, fill_n, sk_n, sv_n = _page_meta(
                take_ptr, fill_ptr, off_k_ptr, off_v_ptr, row_w, row_c, p + pages_per_tile,
                p_end, lo, COPY_IN,
            )  # fmt: skip
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m, l, acc = _online(s, v, m, l, acc, tl.full([BLOCK_N], 1.0, tl.float32))
    return m, l, acc


@triton.jit
def decode_kernel(
    q_ptr, st_k, st_v, pos_ptr, CAP, mi_k, mi_v, mi_len_ptr, MI_STRIDE, M,
    ca_k, ca_v, take_ptr, fill_ptr, lo_ptr, hit_n_ptr, P1, W,
    cp_k, cp_v, cp_off_k, cp_off_v, CP_W,
    z_ptr, ids_ptr, sizes_ptr, vs_ptr, N, C,
    pm_ptr, pl_ptr, pacc_ptr, scale,
    S_ST, S_MI, S_HI, S,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, PT: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, EST_CHUNK: tl.constexpr,
    EST_BLOCK: tl.constexpr, PREFETCH: tl.constexpr = False, HAS_LO: tl.constexpr = False,
    COPY_IN: tl.constexpr = False,
):  # fmt: skip
    """One split of one row: steady tokens, packed misses, cache pages (take[lo:hit_n], lo = 0
    unless HAS_LO, shared evenly by the S_HI page splits; COPY_IN: filled from the source on
    the way, see _attend_pages) or estimated clusters."""
    r = tl.program_id(0)
    sid = tl.program_id(1)
    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, D)
    q = tl.load(
        q_ptr + (r.to(tl.int64) * G + offs_g[:, None]) * D + offs_d[None, :],
        mask=offs_g[:, None] < G,
        other=0.0,
    )
    m = tl.full([GP], float("-inf"), tl.float32)
    l = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    if sid < S_ST:
        n = tl.load(pos_ptr + r) + 1  # the row's last steady token is at pos[r]
        start = sid * CHUNK
        end = tl.minimum(start + CHUNK, n)
        m, l, acc = _attend_rows(
            q, st_k, st_v, r.to(tl.int64) * CAP * D, start, end, m, l, acc, scale, D, BLOCK_N
        )
    elif sid < S_ST + S_MI:
        n = tl.load(mi_len_ptr + r * MI_STRIDE)
        start = (sid - S_ST) * CHUNK
        end = tl.minimum(start + CHUNK, n)
        m, l, acc = _attend_rows(
            q, mi_k, mi_v, r.to(tl.int64) * M * D, start, end, m, l, acc, scale, D, BLOCK_N
        )
    elif sid < S_ST + S_MI + S_HI:  # the row's pages, divided evenly in whole tiles
        n = tl.load(hit_n_ptr + r)
        lo = n * 0
        if HAS_LO:
            lo = tl.load(lo_ptr + r)
        per_tile: tl.constexpr = BLOCK_N // PT
        span = tl.maximum(n - lo, 0)
        per = tl.cdiv(tl.cdiv(span, S_HI), per_tile) * per_tile
        start = lo + (sid - S_ST - S_MI) * per
        end = tl.minimum(start + per, n)
        m, l, acc = _attend_pages(
            q, ca_k, ca_v, take_ptr, fill_ptr, r, P1, W, start, end, m, l, acc, scale,
            cp_k, cp_v, cp_off_k, cp_off_v, CP_W, lo, D, PT, BLOCK_N, PREFETCH, COPY_IN,
        )  # fmt: skip
    else:
        m, l, acc = _estimate_split(
            z_ptr, ids_ptr, sizes_ptr, vs_ptr, r, sid - S_ST - S_MI - S_HI, N, C,
            G, GP, D, EST_CHUNK, EST_BLOCK, PREFETCH,
        )  # fmt: skip
    _store_partial(pm_ptr, pl_ptr, pacc_ptr, r, sid, S, m, l, acc, G, GP, D, SKIP_EMPTY=True)


@triton.jit
def _fold_partials(
    pm_ptr, pl_ptr, pacc_ptr, r, S, m, l, acc,
    G: tl.constexpr, GC: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """Folds a row's S partials (BS at a time) into the running (m, l, acc)."""
    offs_s = tl.arange(0, BS)
    offs_g = tl.arange(0, GC)
    offs_d = tl.arange(0, D)
    in_g = offs_g < G
    for s0 in range(0, S, BS):
        ok = ((s0 + offs_s) < S)[:, None] & in_g[None, :]  # [BS, GC]
        idx = (r.to(tl.int64) * S + s0 + offs_s)[:, None] * G + offs_g[None, :]
        ms = tl.load(pm_ptr + idx, mask=ok, other=float("-inf"))
        ls = tl.load(pl_ptr + idx, mask=ok, other=0.0)
        has = ok & (ms > float("-inf"))  # empty splits' acc is not written (SKIP_EMPTY)
        accs = tl.load(
            pacc_ptr + idx[:, :, None] * D + offs_d[None, None, :], mask=has[:, :, None], other=0.0
        )  # [BS, GC, D]
        m_new = tl.maximum(m, tl.max(ms, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        a = tl.exp(m - m_safe)
        b = tl.exp(ms - m_safe[None, :])  # [BS, GC]
        l = l * a + tl.sum(ls * b, axis=0)
        acc = acc * a[:, None] + tl.sum(accs * b[:, :, None], axis=0)
        m = m_new
    return m, l, acc


@triton.jit
def combine_kernel(
    pm_ptr, pl_ptr, pacc_ptr, S, pm2_ptr, pl2_ptr, pacc2_ptr, S2, pm3_ptr, pl3_ptr, pacc3_ptr,
    S3, out_ptr, lse_ptr,
    G: tl.constexpr, GC: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """Log-sum-exp merge of a row's partials from up to three buffers (S, S2, S3 splits; 0:
    none) -> out [G, D] fp32, lse [G]. The acc of a split with m = -inf is not read."""
    r = tl.program_id(0)
    offs_g = tl.arange(0, GC)
    offs_d = tl.arange(0, D)
    in_g = offs_g < G
    m = tl.full([GC], float("-inf"), tl.float32)
    l = tl.zeros([GC], tl.float32)
    acc = tl.zeros([GC, D], tl.float32)
    m, l, acc = _fold_partials(pm_ptr, pl_ptr, pacc_ptr, r, S, m, l, acc, G, GC, D, BS)
    m, l, acc = _fold_partials(pm2_ptr, pl2_ptr, pacc2_ptr, r, S2, m, l, acc, G, GC, D, BS)
    m, l, acc = _fold_partials(pm3_ptr, pl3_ptr, pacc3_ptr, r, S3, m, l, acc, G, GC, D, BS)
    o = acc / tl.maximum(l, 1e-30)[:, None]
    lse = tl.where(l > 0, m + tl.log(tl.maximum(l, 1e-30)), float("-inf"))
    row = r.to(tl.int64) * G
    tl.store(out_ptr + (row + offs_g[:, None]) * D + offs_d[None, :], o, mask=in_g[:, None])
    tl.store(lse_ptr + row + offs_g, lse, mask=in_g)
