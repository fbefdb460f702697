"""Split-K decode attention over the execution buffer, read in place, with the estimation
zone and the log-sum-exp merge fused in.

The execution buffer [steady | misses | hits] is not materialised: one kernel reads the steady
zone, the packed misses and the hit clusters' cache pages where they lie (each split of a row
covers a chunk of one of them, or a chunk of the estimated clusters), writes split partials, and
a combine kernel merges them. Widths are capacities (graph friendly) but every split stops at
the row's real length, so unused capacity costs no memory traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..attention import merge, partial_attention
from .availability import pick
from .estimate import EST_CHUNK, estimate_partials_reference
from .partials import Partials, PartialTensors, combine_partials
from .sizes import cdiv


@dataclass(frozen=True, slots=True)
class DecodeTuning:
    """Launch shape of the decode kernel (any values give the same result up to rounding).
    The defaults are the fastest measured on the H100 at 128K x 16 (docs/retro_kernels.md)."""

    chunk: int = 1024  # tokens per exact split (a multiple of block_n and of the page size)
    block_n: int = 64  # tokens per tile
    est_chunk: int = EST_CHUNK  # estimated clusters per split
    est_block: int = 16  # estimated clusters per tile
    num_warps: int = 4
    num_stages: int | None = None  # None: Triton's default (3)
    prefetch: bool = True  # load the next tile's page numbers / cluster ids a tile ahead
    # splits over a row's listed pages, which share them evenly (whole tiles); None: one per
    # chunk of the page table's width (its capacity)
    page_splits: int | None = None


TUNING = DecodeTuning()


@dataclass(slots=True)
class CopyIn:
    """Cache pages filled from the source as they are attended (fused admission copy): page
    take[r, page_lo[r] + s] receives its fill[r, page_lo[r] + s] rows from element offsets
    off_k[r, s] / off_v[r, s] of src_k / src_v (the admission runs of slot s). The source is
    read once, the page written once, and no copy kernel precedes the attention. A slot whose
    page is the scratch page (the cache's last, P1 - 1) is attended from the source and not
    written: a miss the cache could not admit, attended in place instead of fetched."""

    src_k: torch.Tensor  # base of the source keys (device memory; offsets count elements)
    src_v: torch.Tensor  # base of the source values
    off_k: torch.Tensor  # [R, S] int64 element offset of slot s's first key row
    off_v: torch.Tensor  # [R, S] int64 (same strides as off_k)


# rows a copy_in view reads from its source: keys, values [R, W, PT, D], read [R, W, PT] bool
SourceRows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(slots=True)
class ExecView:
    """Where the exactly attended tokens of a step lie (R = B * Hkv rows)."""

    steady_k: torch.Tensor  # [R, CAP, D] steady zone; row r's tokens 0..pos[r] valid
    steady_v: torch.Tensor  # [R, CAP, D]
    pos: torch.Tensor  # [R] int64 index of each row's last valid steady token
    miss_k: torch.Tensor  # [R, M, D] packed misses; the first miss_len[r] rows valid
    miss_v: torch.Tensor  # [R, M, D]
    miss_len: torch.Tensor  # [R] int64 (any stride: e.g. the last column of the miss offsets)
    cache_k: torch.Tensor  # [R, P1, PT, D] wave-buffer pages
    cache_v: torch.Tensor  # [R, P1, PT, D]
    take: torch.Tensor  # [R, W] int64 page index of each hit page (hit pages first)
    fill: torch.Tensor  # [R, W] int64 valid tokens of each taken page
    hit_pages: torch.Tensor  # [R] int64 number of hit pages at the front of `take`
    # [R] int64: attend take[r, page_lo[r]:hit_pages[r]] only (None: from 0); a zone whose
    # tensors have width 0 (steady_k, miss_k) is not attended
    page_lo: torch.Tensor | None = None
    # the pages take[r, page_lo[r]:hit_pages[r]] are read from the source and written to the
    # cache as they are attended (needs page_lo); None: they already hold their rows
    copy_in: CopyIn | None = None


def decode_attention(
    q: torch.Tensor,  # [R, G, D] in the K/V dtype
    view: ExecView,
    z: torch.Tensor,  # [R, G, C] fp32 centroid logits (scaled)
    estimated: torch.Tensor,  # [R, N] int64 ids of the estimated clusters (-1 = none)
    sizes: torch.Tensor,  # [R, C] int64
    value_sums: torch.Tensor,  # [R, C, D] fp32 or the K/V dtype
    scale: float,
    use_triton: bool | None = None,
    tuning: DecodeTuning | None = None,
    early: Sequence[Partials] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tripartite attention output (o [R, G, D] fp32, lse [R, G] fp32). value_sums may be
    fp32 or the K/V dtype. `early`: up to two more sets of partials computed elsewhere (e.g.
    on side streams: the estimation zone by estimate_async, the cache hits by exact_partials),
    merged in too; `view` and `estimated` then cover only what is left."""
    if not pick(use_triton, q):
        return decode_attention_reference(q, view, z, estimated, sizes, value_sums, scale, early)
    parts = exact_partials(q, view, z, estimated, sizes, value_sums, scale, tuning)
    return combine([Partials(*parts), *early])


def exact_partials(
    q: torch.Tensor,
    view: ExecView,
    z: torch.Tensor,
    estimated: torch.Tensor,
    sizes: torch.Tensor,
    value_sums: torch.Tensor,
    scale: float,
    tuning: DecodeTuning | None = None,
) -> PartialTensors:
    """The split kernel alone (Triton): partials of the view's zones and the listed clusters."""
    _check_copy_in(view)
    from ._attn_triton import decode_kernel

    t = tuning or TUNING
    r, g, d = q.shape
    cap, m_width = view.steady_k.shape[1], view.miss_k.shape[1]
    p1, pt = view.cache_k.shape[1], view.cache_k.shape[2]
    w, c = view.take.shape[1], z.shape[-1]
    s_st, s_mi = cdiv(cap, t.chunk), cdiv(m_width, t.chunk)
    s_hi = t.page_splits or cdiv(w, t.chunk // pt)
    n_est = estimated.shape[1]
    s = max(s_st + s_mi + s_hi + cdiv(n_est, t.est_chunk), 1)
    stages = {} if t.num_stages is None else {"num_stages": t.num_stages}
    dev = q.device
    pm = torch.empty(r, s, g, dtype=torch.float32, device=dev)
    pl = torch.empty(r, s, g, dtype=torch.float32, device=dev)
    pacc = torch.empty(r, s, g, d, dtype=torch.float32, device=dev)
    lo = view.page_lo if view.page_lo is not None else view.hit_pages
    cp = view.copy_in
    decode_kernel[(r, s)](
        q.contiguous(), view.steady_k, view.steady_v, view.pos.contiguous(), cap,
        view.miss_k, view.miss_v, view.miss_len, view.miss_len.stride(0), m_width,
        view.cache_k, view.cache_v, view.take, view.fill, lo, view.hit_pages, p1, w,
        *((cp.src_k, cp.src_v, cp.off_k, cp.off_v, cp.off_k.stride(0)) if cp
          else (view.cache_k, view.cache_v, lo, lo, 0)),
        z, estimated.contiguous(), sizes, value_sums, n_est, c,
        pm, pl, pacc, scale, s_st, s_mi, s_hi, s,
        G=g, GP=16, D=d, PT=pt, CHUNK=t.chunk, BLOCK_N=t.block_n, EST_CHUNK=t.est_chunk,
        EST_BLOCK=t.est_block, PREFETCH=t.prefetch, HAS_LO=view.page_lo is not None,
        COPY_IN=cp is not None, num_warps=t.num_warps, **stages,
    )  # fmt: skip
    return pm, pl, pacc


def combine(parts: Sequence[Partials]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-sum-exp merge of 1 to 3 sets of partials (Triton): (o [R, G, D], lse [R, G]) fp32.
    Waits for sets still being computed on a side stream."""
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"combine takes 1 to 3 sets of partials, got {len(parts)}")
    from ._attn_triton import combine_kernel

    for p in parts:
        p.wait()
    r, _, g, d = parts[0].acc.shape
    sets = [(p.m, p.l, p.acc, p.m.shape[1]) for p in parts]
    sets += [(parts[0].m, parts[0].l, parts[0].acc, 0)] * (3 - len(parts))
    out = torch.empty(r, g, d, dtype=torch.float32, device=parts[0].m.device)
    lse = torch.empty(r, g, dtype=torch.float32, device=parts[0].m.device)
    gc = 1 << max(g - 1, 0).bit_length()
    combine_kernel[(r,)](
        *sets[0], *sets[1], *sets[2], out, lse, G=g, GC=gc, D=d, BS=16, num_warps=4
    )  # fmt: skip
    return out, lse


def decode_attention_reference(
    q: torch.Tensor,
    view: ExecView,
    z: torch.Tensor,
    estimated: torch.Tensor,
    sizes: torch.Tensor,
    value_sums: torch.Tensor,
    scale: float,
    early: Sequence[Partials] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch reference: materialise [steady | misses | hit pages], attend, estimate, merge
    (with the `early` partials). A view's copy_in is carried out first (copy_in_reference)."""
    rows = copy_in_reference(view) if view.copy_in is not None else None
    keys, values, mask = materialise(view, rows)
    o_x, lse_x = partial_attention(q, keys, values, mask, scale)
    sets = [estimate_partials_reference(z, estimated, sizes, value_sums)]
    for p in early:
        p.wait()
        sets.append(p.tensors())
    o_e, lse_e = combine_partials(*(torch.cat(t, dim=1) for t in zip(*sets, strict=True)))
    return merge(o_x, lse_x, o_e, lse_e), torch.logaddexp(lse_x, lse_e)


def copy_in_reference(view: ExecView) -> SourceRows:
    """Write the view's copy_in rows into their cache pages, as the kernel does while attending
    (never the scratch page); returns the rows read (see _copy_in_rows)."""
    rows = _copy_in_rows(view)
    k, v, read = rows  # [R, W, PT, D], [R, W, PT]
    p1, pt, d = view.cache_k.shape[1:]
    ok = read & (view.take != p1 - 1).unsqueeze(-1)
    tok = _row_pages(view).unsqueeze(-1) * pt + torch.arange(pt, device=ok.device)  # [R, W, PT]
    dst = tok[ok]
    view.cache_k.view(-1, d)[dst] = k[ok].to(view.cache_k.dtype)
    view.cache_v.view(-1, d)[dst] = v[ok].to(view.cache_v.dtype)
    return rows


def _copy_in_rows(view: ExecView) -> SourceRows:
    """The rows a copy_in view reads from the source, per page-table entry: keys, values
    [R, W, PT, D] (zero where unused) and which rows are read [R, W, PT] (the entries from
    page_lo to hit_pages, their first fill rows)."""
    _check_copy_in(view)
    cp, lo = view.copy_in, view.page_lo
    assert cp is not None and lo is not None
    r, w = view.take.shape
    pt, d = view.cache_k.shape[2:]
    dev = view.take.device
    at = torch.arange(w, device=dev)
    listed = (at >= lo.unsqueeze(1)) & (at < view.hit_pages.unsqueeze(1))  # [R, W]
    slot = (at - lo.unsqueeze(1)).clamp(0, cp.off_k.shape[1] - 1)  # [R, W]
    ok = (torch.arange(pt, device=dev) < view.fill.unsqueeze(-1)) & listed.unsqueeze(-1)
    within = (torch.arange(pt, device=dev) * d).view(pt, 1) + torch.arange(d, device=dev)

    def rows(src: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        idx = off.to(dev).gather(1, slot).view(r, w, 1, 1) + within  # [R, W, PT, D]
        idx = torch.where(ok.unsqueeze(-1), idx, 0)
        flat = src.reshape(-1)[idx.view(-1).to(src.device)].to(dev)
        return torch.where(ok.unsqueeze(-1), flat.view(r, w, pt, d), 0)

    return rows(cp.src_k, cp.off_k), rows(cp.src_v, cp.off_v), ok


def _row_pages(view: ExecView) -> torch.Tensor:
    """[R, W] int64: the page table's entries as page indices over all rows' pages."""
    r, p1 = view.take.shape[0], view.cache_k.shape[1]
    return view.take + (torch.arange(r, device=view.take.device) * p1).unsqueeze(1)


def _check_copy_in(view: ExecView) -> None:
    if view.copy_in is not None and view.page_lo is None:
        raise ValueError("ExecView.copy_in needs page_lo (the first copied page of each row)")


def materialise(
    view: ExecView, rows: SourceRows | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The execution buffer as contiguous rows: keys, values [R, T, D] (invalid rows zeroed)
    and the valid mask [R, T]. Pages a copy_in view reads from the source are taken from the
    source (the scratch page holds none of them); `rows`: those rows if already read."""
    r, cap, d = view.steady_k.shape
    dev = view.steady_k.device
    p1, pt = view.cache_k.shape[1], view.cache_k.shape[2]
    w = view.take.shape[1]
    st_mask = torch.arange(cap, device=dev) <= view.pos.unsqueeze(1)  # [R, CAP]
    mi_mask = torch.arange(view.miss_k.shape[1], device=dev) < view.miss_len.unsqueeze(1)
    in_w = torch.arange(w, device=dev) < view.hit_pages.unsqueeze(1)  # [R, W]
    if view.page_lo is not None:
        in_w &= torch.arange(w, device=dev) >= view.page_lo.unsqueeze(1)
    hit_mask = (torch.arange(pt, device=dev) < view.fill.unsqueeze(-1)) & in_w.unsqueeze(-1)
    flat = _row_pages(view).view(-1)
    hit_k = view.cache_k.reshape(r * p1, pt, d).index_select(0, flat).view(r, w, pt, d)
    hit_v = view.cache_v.reshape(r * p1, pt, d).index_select(0, flat).view(r, w, pt, d)
    if view.copy_in is not None:
        src_k, src_v, from_src = rows if rows is not None else _copy_in_rows(view)
        hit_k = torch.where(from_src.unsqueeze(-1), src_k.to(hit_k.dtype), hit_k)
        hit_v = torch.where(from_src.unsqueeze(-1), src_v.to(hit_v.dtype), hit_v)
    mask = torch.cat([st_mask, mi_mask, hit_mask.view(r, w * pt)], dim=1)  # [R, T]
    keys = torch.cat([view.steady_k, view.miss_k, hit_k.view(r, w * pt, d)], dim=1)
    values = torch.cat([view.steady_v, view.miss_v, hit_v.view(r, w * pt, d)], dim=1)
    keep = mask.unsqueeze(-1)
    return torch.where(keep, keys, 0), torch.where(keep, values, 0), mask
