"""Fresh random inputs for each kernel and a kernel-vs-reference comparison of all of them.

Used by test_kernels.py beside it (GPU part; `run_interpreted` on CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch

from inference_worker.retroinfer.attention import merge
from inference_worker.retroinfer.config import RetroInferConfig
from inference_worker.retroinfer.kernels import rank as rank_mod
from inference_worker.retroinfer.kernels.availability import patch_interpreter_index
from inference_worker.retroinfer.kernels.decode_attention import (
    CopyIn,
    DecodeTuning,
    ExecView,
    decode_attention,
    decode_attention_reference,
    exact_partials,
)
from inference_worker.retroinfer.kernels.estimate import (
    estimate_async,
    estimate_partials,
    estimate_partials_reference,
)
from inference_worker.retroinfer.kernels.gather import copy_runs, copy_runs_reference
from inference_worker.retroinfer.kernels.partials import combine_partials, on_side
from inference_worker.retroinfer.kernels.rank import rank_select, rank_select_reference

Case = dict[str, Any]


def rank_case(r: int, g: int, c: int, d: int, dtype: torch.dtype, device: str, seed: int) -> Case:
    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = torch.randint(0, 33, (r, c), generator=gen, device=device)
    config = RetroInferConfig()  # the default n_ret / n_est, as RetroInferLayer computes them
    return {
        "q": (torch.randn(r, g, d, generator=gen, device=device) * 2).to(dtype),
        "centroids": torch.randn(r, c, d, generator=gen, device=device).to(dtype),
        "sizes": sizes,
        "scale": d**-0.5,
        "n_ret": config.retrieval_clusters(c),
        "n_est": config.estimation_clusters(c),
    }


def estimate_case(r: int, g: int, c: int, d: int, device: str, seed: int) -> Case:
    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = torch.randint(0, 33, (r, c), generator=gen, device=device)
    z = torch.randn(r, g, c, generator=gen, device=device) * 3
    empty = sizes == 0
    # half the empty clusters keep a finite logit and every one a nonzero value sum: the
    # kernels must mask them by size, not rely on z = -inf / VS = 0
    masked = empty & (torch.rand(r, c, generator=gen, device=device) < 0.5)
    garbage = torch.randn(r, c, d, generator=gen, device=device) * empty.unsqueeze(-1)
    return {
        "z": z.masked_fill(masked.unsqueeze(1), float("-inf")),
        # a quarter of the clusters, as a list with a few -1 holes
        "estimated": torch.argsort(torch.rand(r, c, generator=gen, device=device), dim=1)[
            :, : c // 4
        ].masked_fill(torch.rand(r, c // 4, generator=gen, device=device) < 0.02, -1),
        "sizes": sizes,
        "value_sums": torch.randn(r, c, d, generator=gen, device=device) * sizes.unsqueeze(-1)
        + garbage,
    }


def attention_case(
    r: int, g: int, d: int, tokens: int, c: int, dtype: torch.dtype, device: str, seed: int
) -> Case:
    """Steady zone of 1092 slots (900 valid), `tokens` packed miss slots, a 16-page-per-cluster
    cache with random hit pages, and an estimation zone over c clusters."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    p1, pt = tokens // 8 + 1, 8
    w = p1 - 1
    take = torch.argsort(torch.rand(r, p1, generator=gen, device=device), dim=1)[:, :w]
    view = ExecView(
        steady_k=rnd(r, 1092, d),
        steady_v=rnd(r, 1092, d),
        pos=torch.tensor([899], device=device),
        miss_k=rnd(r, tokens, d),
        miss_v=rnd(r, tokens, d),
        # a strided column (the kernel reads it with a stride, as fast_step passes it)
        miss_len=torch.randint(0, tokens + 1, (r, 3), generator=gen, device=device)[:, 1],
        cache_k=rnd(r, p1, pt, d),
        cache_v=rnd(r, p1, pt, d),
        take=take.contiguous(),
        fill=torch.randint(1, pt + 1, (r, w), generator=gen, device=device),
        hit_pages=torch.randint(0, w + 1, (r,), generator=gen, device=device),
    )
    case = estimate_case(r, g, c, d, device, seed + 1)
    case.update(q=rnd(r, g, d), view=view, scale=d**-0.5)
    return case


def with_copy_in(case: Case, seed: int) -> Case:
    """The attention case with a random page cut lo (page_lo) and the pages from lo filled from
    a random source on the way (copy_in: random row offsets per page slot, in rows wider than
    the page table). Each row's first copied entry is the scratch page: a miss attended from
    the source in place, never written."""
    view = case["view"]
    r, p1, pt, d = view.cache_k.shape
    w = view.take.shape[1]
    dev, dtype = view.cache_k.device, view.cache_k.dtype
    gen = torch.Generator(device=dev).manual_seed(seed)
    src_rows = 3 * p1 * pt
    src = torch.randn(2, src_rows, d, generator=gen, device=dev).to(dtype)
    off = torch.randint(0, src_rows - pt + 1, (2, r, w + 3), generator=gen, device=dev) * d
    cut = torch.rand(r, generator=gen, device=dev) * (view.hit_pages + 1)
    lo = cut.long().clamp(max=view.hit_pages)
    take = view.take.clone()
    at = torch.arange(w, device=dev)
    first = (at == lo.unsqueeze(1)) & (lo < view.hit_pages).unsqueeze(1)  # [R, W]
    holds = take == p1 - 1  # the scratch page elsewhere in the row: give it the first's page
    moved = first.any(1, keepdim=True) & holds
    take = torch.where(moved, (take * first).sum(1, keepdim=True), take)
    take = torch.where(first, p1 - 1, take)
    copy_in = CopyIn(src[0], src[1], off[0], off[1])
    return case | {"view": dataclasses.replace(view, take=take, page_lo=lo, copy_in=copy_in)}


def copy_case(
    runs: int, d: int, dtype: torch.dtype, device: str, seed: int, max_rows: int = 40
) -> Case:
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = torch.randint(0, max_rows, (runs,), generator=gen, device=device)
    src_rows = 50 * runs
    start = torch.randint(0, src_rows - max_rows, (runs,), generator=gen, device=device)
    dst_start = torch.cumsum(rows, 0) - rows
    total = int(rows.sum()) + 1
    return {
        "src_k": torch.randn(src_rows, d, generator=gen, device=device).to(dtype),
        "src_v": torch.randn(src_rows, d, generator=gen, device=device).to(dtype),
        "dst_shape": (total, d),
        "src_off": start * d,
        "dst_off": dst_start * d,
        "rows": rows,
    }


def compare_all(device: str, dtype: torch.dtype, seed: int = 0, big: bool = False) -> dict:
    """Run every kernel and its reference on fresh inputs; max abs differences and agreement."""
    r, g, d = (128, 4, 128) if big else (16, 4, 128)
    c = 8192 if big else 1500
    out: dict[str, Any] = {"rows": r, "group": g, "head_dim": d, "clusters": c}
    case = rank_case(r, g, c, d, dtype, device, seed)
    a = rank_select(**case, use_triton=True)
    b = rank_select_reference(**case)
    out["rank_z_max_abs"] = float((a.z - b.z).nan_to_num(0, 0, 0).abs().max())
    # same set; the order may differ between clusters whose scores differ by rounding only
    same = torch.equal(a.retrieved.sort(1).values, b.retrieved.sort(1).values)
    out["rank_retrieved_equal"] = bool(same)
    ids_same = torch.equal(a.estimated_ids.sort(1).values, b.estimated_ids.sort(1).values)
    out["rank_estimated_equal"] = bool(torch.equal(a.estimated, b.estimated) and ids_same)
    case = rank_case(8, g, 30000, d, dtype, device, seed + 4)  # a 512K-token index
    a, b = rank_select(**case, use_triton=True), rank_select_reference(**case)
    same = torch.equal(a.retrieved.sort(1).values, b.retrieved.sort(1).values)
    out["rank_30000_clusters_equal"] = bool(same and torch.equal(a.estimated, b.estimated))
    case = estimate_case(r, g, c, d, device, seed + 1)
    oa = combine_partials(*estimate_partials(**case, use_triton=True))
    ob = combine_partials(*estimate_partials_reference(**case))
    out["estimate_o_max_abs"] = float((oa[0] - ob[0]).abs().max())
    out["estimate_lse_max_abs"] = float((oa[1] - ob[1]).nan_to_num(0, 0, 0).abs().max())
    case = attention_case(r, g, d, 2048, c, dtype, device, seed + 2)
    oa = decode_attention(**case, use_triton=True)
    ob = decode_attention_reference(**case)
    out["attention_o_max_abs"] = float((oa[0] - ob[0]).abs().max())
    out["attention_lse_max_abs"] = float((oa[1] - ob[1]).abs().max())
    case = copy_case(r * 20, d, dtype, device, seed + 3)
    dst = [torch.zeros(case["dst_shape"], dtype=dtype, device=device) for _ in range(4)]
    args = (case["src_off"], case["src_off"], case["dst_off"], case["rows"], d)
    copy_runs(case["src_k"], case["src_v"], dst[0], dst[1], *args, use_triton=True)
    copy_runs_reference(case["src_k"], case["src_v"], dst[2], dst[3], *args)
    out["copy_equal"] = bool(torch.equal(dst[0], dst[2]) and torch.equal(dst[1], dst[3]))
    return out


def check_copy(device: str, dtype: torch.dtype, seed: int) -> None:
    """copy_runs vs the reference: cluster-sized runs (long, looped) and page-sized runs
    (mostly empty, as admission writes them), run counts not a multiple of a program's runs."""
    for block_rows, max_rows, runs in ((16, 40, 37), (8, 8, 61)):
        case = copy_case(runs, 64, dtype, device, seed, max_rows)
        dst = [torch.zeros(case["dst_shape"], dtype=dtype, device=device) for _ in range(4)]
        args = (case["src_off"], case["src_off"], case["dst_off"], case["rows"], 64)
        copy_runs(case["src_k"], case["src_v"], dst[0], dst[1], *args, True, block_rows)
        copy_runs_reference(case["src_k"], case["src_v"], dst[2], dst[3], *args)
        assert torch.equal(dst[0], dst[2]) and torch.equal(dst[1], dst[3]), block_rows


def check_select_ties(device: str, seed: int) -> None:
    """The selection rule with exact ties: clusters share one of 40 distinct centroids, so many
    scores are equal; the kernel must take, by score and then by index, the first n_ret clusters
    (retrieved) and the next n_est (estimated), exactly.

    Ties are ties of the computed scores. Equal centroids give bit-equal logits only where the
    dot product's rounding does not depend on the centroid's position; the Triton interpreter's
    `tl.dot` is numpy's matmul, whose BLAS kernels (OpenBLAS on AMD EPYC, say) round columns at
    different positions differently. So q and the centroids are multiples of 1/4 of bounded size
    and the scale is a power of two: every product and partial sum is exact in fp32, and equal
    centroids give equal logits in any summation order, on any device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    r, g, c, d = 3, 4, 1500, 64
    case = rank_case(r, g, c, d, torch.float32, device, seed)
    case["q"] = _dyadic(case["q"], 8.0)
    pool = _dyadic(torch.randn(r, 40, d, generator=gen, device=device), 4.0)
    pick_ = torch.randint(0, 40, (r, c), generator=gen, device=device)
    case["centroids"] = pool.gather(1, pick_.unsqueeze(-1).expand(r, c, d)).contiguous()
    case["sizes"] = torch.where(case["sizes"] > 0, 7, 0)  # equal sizes keep the ties exact
    assert case["scale"] == 0.125  # d = 64: a power of two, exact
    for arity in (2, 4, 8, 256):  # bisection, packed 4-ary, 8-ary (2-D counts), radix
        _check_ties(case, {"SELECT_ARITY": arity}, exact=True)


def _dyadic(x: torch.Tensor, bound: float) -> torch.Tensor:
    """x rounded to a multiple of 1/4 in [-bound, bound] (few mantissa bits: exact products)."""
    return (x * 4).round().clamp(-4 * bound, 4 * bound) / 4


def check_select_bounds(device: str, seed: int) -> None:
    """The bisection's early exit and its row-range start: a gap right after the n_ret-th score
    (the first threshold inside it counts exactly n_ret), zones ending at the last cluster
    (n_ret + n_est = C: the threshold is the row's smallest score), rows whose clusters are
    mostly empty (many zero scores), and fresh random rows at several sizes; the bisection
    and the packed 4-ary search alike."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for i, (c, n_ret, n_est) in enumerate(((700, 20, 100), (300, 7, 293))):
        case = rank_case(3, 4, c, 64, torch.float32, device, seed + i)
        case["n_ret"], case["n_est"] = n_ret, n_est
        _check_arities(case)
    case = rank_case(3, 4, 700, 64, torch.float32, device, seed + 5)
    top = torch.rand(3, 700, generator=gen, device=device).argsort(1)[:, :20]  # [R, 20]
    boost = torch.zeros(3, 700, 64, device=device).scatter_(
        1, top.unsqueeze(-1).expand(3, 20, 64), 4.0
    )
    case["centroids"] = case["centroids"] + boost * case["q"].float().mean(1, keepdim=True).sign()
    case["n_ret"], case["n_est"] = 20, 200
    _check_arities(case)
    case["sizes"] = torch.where(torch.rand(3, 700, generator=gen, device=device) < 0.6, 0, 5)
    case["sizes"][:, :300] = 5  # at least n_ret + n_est non-empty clusters
    _check_arities(case)


def _check_arities(case: Case) -> None:
    for arity in (2, 4):  # bisection, packed 4-ary search: same early exit and bounds
        _check_ties(case, {"SELECT_ARITY": arity})


def _check_ties(case: Case, knobs: dict[str, int], exact: bool = False) -> None:
    """exact: the case's logits are exact in fp32 (see check_select_ties); the kernel's must
    then equal the reference's bit for bit, so that tied clusters are tied in both."""
    old = {k: getattr(rank_mod, k) for k in knobs}
    for k, v in knobs.items():
        setattr(rank_mod, k, v)
    try:
        got = rank_select(**case, use_triton=True)
    finally:
        for k, v in old.items():
            setattr(rank_mod, k, v)
    r = case["q"].shape[0]
    score = rank_select_reference(**case).z  # [R, G, C]
    if exact:
        assert torch.equal(got.z, score), "exact inputs must give the reference's exact logits"
    probs = torch.softmax(score, dim=-1).nan_to_num(0).sum(1)  # [R, C] group scores
    order = torch.sort(probs, dim=1, descending=True, stable=True).indices
    n_ret, n_est = case["n_ret"], case["n_est"]
    want_ret = order[:, :n_ret].sort(1).values
    want_est = order[:, n_ret : n_ret + n_est].sort(1).values
    assert torch.equal(got.retrieved.sort(1).values, want_ret)
    assert torch.equal(got.estimated_ids.sort(1).values, want_est)
    assert torch.equal(got.estimated.nonzero()[:, 1].view(r, -1).sort(1).values, want_est)


def check_attention(device: str, seed: int, kv_dtype: torch.dtype = torch.float32) -> None:
    """decode_attention vs the reference at two launch shapes, with fp32 value sums and (a
    reduced-precision K/V dtype only) value sums in the K/V dtype. The interpreter has no bf16
    arithmetic: on CPU use fp32."""
    case = attention_case(3, 4, 64, 256, 300, kv_dtype, device, seed)
    atol, rtol = (2e-4, 1e-3) if kv_dtype == torch.float32 else (3e-2, 3e-2)
    value_dtypes = [torch.float32] + ([kv_dtype] if kv_dtype != torch.float32 else [])
    for value_dtype in value_dtypes:
        case["value_sums"] = case["value_sums"].to(value_dtype)
        want = decode_attention_reference(**case)
        for tuning in (
            DecodeTuning(),
            DecodeTuning(chunk=128, block_n=32, est_chunk=64),
            DecodeTuning(chunk=128, block_n=32, est_chunk=64, est_block=16, prefetch=True),
            DecodeTuning(chunk=128, block_n=32, page_splits=3),  # rows' pages split evenly
        ):
            got = decode_attention(**case, use_triton=True, tuning=tuning)
            torch.testing.assert_close(got[0], want[0], atol=atol, rtol=rtol)
            torch.testing.assert_close(got[1], want[1], atol=atol, rtol=rtol)
        _check_early(case, want, device, atol, rtol)
    _check_copy_in(case, atol, rtol)


def _check_copy_in(case: Case, atol: float, rtol: float) -> None:
    """Pages attended from the source and written on the way (copy_in) vs the reference (copy,
    then attend; the scratch page's rows from the source): same outputs, and the caches after
    are identical (every page, listed or not; the scratch page untouched)."""
    case = with_copy_in(case, seed=11)
    view = case["view"]
    results = []
    for use_triton in (True, False):
        cache = (view.cache_k.clone(), view.cache_v.clone())
        run = case | {"view": dataclasses.replace(view, cache_k=cache[0], cache_v=cache[1])}
        out = decode_attention(**run, use_triton=use_triton)
        results.append((out, cache))
    (got, got_cache), (want, want_cache) = results
    torch.testing.assert_close(got[0], want[0], atol=atol, rtol=rtol)
    torch.testing.assert_close(got[1], want[1], atol=atol, rtol=rtol)
    assert torch.equal(got_cache[0], want_cache[0]) and torch.equal(got_cache[1], want_cache[1])
    assert not torch.equal(got_cache[0], view.cache_k)  # some page was written
    assert torch.equal(got_cache[0][:, -1], view.cache_k[:, -1])  # never the scratch page


def _check_early(case: Case, want: tuple[torch.Tensor, ...], device: str, atol: float,
                 rtol: float) -> None:  # fmt: skip
    """The step split as fast_step splits it: half the estimated list ahead (estimate_async),
    the steady zone and the first pages of each row (a random cut) as separate partials
    (exact_partials), both on side streams on CUDA; decode_attention(early=...) on the rest
    (misses, pages from the cut, the other half of the list) must give the whole result."""
    est, view = case["estimated"], case["view"]
    half = est.shape[1] // 2
    gen = torch.Generator(device=device).manual_seed(7)
    cut = torch.rand(view.hit_pages.shape, generator=gen, device=device) * (view.hit_pages + 1)
    cut = cut.long().clamp(max=view.hit_pages)  # [R] pages attended in the first part
    first = dataclasses.replace(view, miss_k=view.miss_k[:, :0], miss_v=view.miss_v[:, :0],
                                hit_pages=cut)  # fmt: skip
    rest_view = dataclasses.replace(view, steady_k=view.steady_k[:, :0],
                                    steady_v=view.steady_v[:, :0], page_lo=cut)  # fmt: skip
    rest = case | {"estimated": est[:, half:], "view": rest_view}
    args = (case["z"], est[:, :half], case["sizes"], case["value_sums"])
    sides = [None] + ([torch.cuda.Stream()] if device == "cuda" else [])
    for side, prefetch in itertools.product(sides, (False, True)):
        early = estimate_async(*args, side, True, 16, prefetch)
        a = (case["q"], first, case["z"], est[:, :0], case["sizes"], case["value_sums"])
        first_shape = DecodeTuning(prefetch=prefetch, page_splits=2 if prefetch else None)
        hits = on_side(side, exact_partials, *a, case["scale"], first_shape)
        rest_shape = DecodeTuning(prefetch=prefetch, page_splits=None if prefetch else 3)
        got = decode_attention(**rest, use_triton=True, early=[early, hits], tuning=rest_shape)
        torch.testing.assert_close(got[0], want[0], atol=atol, rtol=rtol)
        torch.testing.assert_close(got[1], want[1], atol=atol, rtol=rtol)
    ref = decode_attention_reference(**rest, early=[estimate_async(*args, None, False)])
    a_ref = decode_attention_reference(*a, case["scale"])  # the first part, by the reference
    merged = merge(ref[0], ref[1], a_ref[0], a_ref[1])
    torch.testing.assert_close(merged, want[0], atol=atol, rtol=rtol)


def check_combine_empty_splits(device: str, seed: int) -> None:
    """The combine kernel vs combine_partials on three sets of random partials where some
    splits of some heads are empty (m = -inf) and their acc holds NaN, as unwritten memory may
    (SKIP_EMPTY): the empty splits add nothing; a head with no mass at all gives o = 0."""
    from inference_worker.retroinfer.kernels.decode_attention import combine
    from inference_worker.retroinfer.kernels.partials import Partials

    gen = torch.Generator().manual_seed(seed)
    r, g, d = 3, 4, 16
    sets, clean = [], []
    for s in (5, 20, 2):  # 20: more than one BS-block of splits
        m = torch.randn(r, s, g, generator=gen) * 3
        empty = torch.rand(r, s, g, generator=gen) < 0.3
        empty[0, :, 1] = True  # row 0, head 1: no mass in any set
        m[empty] = float("-inf")
        l = torch.rand(r, s, g, generator=gen) + 0.1
        acc = torch.randn(r, s, g, d, generator=gen)
        clean.append((m, torch.where(empty, 0.0, l), torch.where(empty[..., None], 0.0, acc)))
        acc = torch.where(empty[..., None], float("nan"), acc)
        sets.append(Partials(m.to(device), l.to(device), acc.to(device)))
    out, lse = combine(sets)
    want_o, want_lse = combine_partials(*(torch.cat(t, dim=1) for t in zip(*clean, strict=True)))
    torch.testing.assert_close(out.cpu(), want_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-5, rtol=1e-5)
    assert bool((out[0, 1] == 0).all()) and lse[0, 1] == float("-inf")


def check_select_full_row(device: str, c: int = 32768) -> None:
    """The widest row (MAX_SELECT_BLOCK clusters) with every score equal: the selection's packed
    16-bit counts reach 32,768 and must not wrap. Ties go by index: the first n_ret clusters
    are retrieved, the next n_est estimated."""
    case = rank_case(2, 4, c, 64, torch.float32, device, seed=0)
    case["centroids"] = torch.zeros_like(case["centroids"])
    case["sizes"] = torch.ones_like(case["sizes"])
    n_ret, n_est = case["n_ret"], case["n_est"]
    got = rank_select(**case, use_triton=True)
    ids = torch.arange(c, device=device)
    assert bool((got.retrieved.sort(1).values == ids[:n_ret]).all()), got.retrieved
    want = (ids >= n_ret) & (ids < n_ret + n_est)
    assert bool((got.estimated == want).all())
    assert bool((got.estimated_ids == ids[n_ret : n_ret + n_est]).all())


def check_rank_int8(
    device: str, dtype: torch.dtype, seed: int, c: int = 1500, rows: int = 8
) -> None:
    """int8 centroids with per-centroid scales: the kernel vs the reference on the same
    quantized centroids (same logits up to rounding, the same retrieved and estimated sets),
    and the reference's logits vs the dequantized centroids' in fp64."""
    from inference_worker.retroinfer.index import quantize_centroids

    case = rank_case(rows, 4, c, 64, dtype, device, seed)
    case["centroids"], case["centroid_scale"] = quantize_centroids(case["centroids"])
    a, b = rank_select(**case, use_triton=True), rank_select_reference(**case)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(a.z, b.z, atol=tol, rtol=tol)
    assert torch.equal(a.retrieved.sort(1).values, b.retrieved.sort(1).values)
    assert torch.equal(a.estimated, b.estimated)
    deq = case["centroids"].double() * case["centroid_scale"].double().unsqueeze(-1)
    want = (case["q"].double() @ deq.transpose(1, 2)) * case["scale"]  # [R, G, C]
    want = want.masked_fill((case["sizes"] == 0).unsqueeze(1), float("-inf"))
    torch.testing.assert_close(b.z.double(), want, atol=tol, rtol=tol)


def run_interpreted() -> None:
    """Small cases for TRITON_INTERPRET=1 on CPU (the interpreter is slow)."""
    patch_interpreter_index()
    check_copy("cpu", torch.float32, seed=1)
    check_select_ties("cpu", seed=2)
    check_select_bounds("cpu", seed=5)
    check_attention("cpu", seed=4)
    check_combine_empty_splits("cpu", seed=6)
    check_rank_int8("cpu", torch.float32, seed=7, c=600, rows=2)
    check_select_full_row("cpu", c=4096)
    case = rank_case(4, 4, 1500, 64, torch.float32, "cpu", seed=3)
    a, b = rank_select(**case, use_triton=True), rank_select_reference(**case)
    assert torch.equal(a.retrieved.sort(1).values, b.retrieved.sort(1).values)
    assert torch.equal(a.estimated, b.estimated)
    print("ok")


if __name__ == "__main__":
    run_interpreted()
