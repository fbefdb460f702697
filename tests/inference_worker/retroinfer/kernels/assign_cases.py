"""Checks of the index-build kernels (assignment, cluster sums, whole k-means) against their
torch references on fresh random inputs. Used by test_assign.py beside it on CUDA and, on CPU,
in a subprocess with TRITON_INTERPRET=1 (`python -m
tests.inference_worker.retroinfer.kernels.assign_cases`), so the compiled and the interpreted
kernels pass the same assertions.
"""

from __future__ import annotations

import torch

from inference_worker.retroinfer.index import IndexSegment, build_segment
from inference_worker.retroinfer.kernels.assign import (
    assign_labels,
    assign_labels_reference,
    padded_segments,
    sort_clusters,
)
from inference_worker.retroinfer.kernels.cluster_sums import cluster_sums, cluster_sums_reference


def check_assign(
    r: int, n: int, c: int, d: int, dtype: torch.dtype, device: str, seed: int, segments: int = 1
) -> float:
    """Triton labels vs the reference: every valid token's chosen centroid scores the row max
    (to a tolerance: near-ties may pick either), padding gets C. Returns the largest gap.
    The keys are a strided view (every other row of a larger tensor), read in place."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(2 * r, n, d, generator=gen, device=device).to(dtype) + 0.5)[::2]
    rows = r * segments
    cent = torch.randn(rows, c, d, generator=gen, device=device).to(dtype)
    width = -(-n // segments)
    lengths = torch.randint(1, width + 1, (rows,), generator=gen, device=device)
    shift = torch.full((r, d), 0.5, device=device) + 0.1 * torch.randn(
        r, d, generator=gen, device=device
    )
    gap = 0.0
    for lens, sh in ((None, None), (lengths, shift), (None, shift)):
        got = assign_labels(x, cent, lens, sh, use_triton=True, num_segments=segments)
        want = assign_labels_reference(x, cent, lens, sh, segments)
        xp, limit, shp = padded_segments(x, lens, sh, segments)
        xe = (xp.float() - shp.unsqueeze(1) if shp is not None else xp).to(dtype)
        scores = xe.double() @ cent.double().transpose(1, 2)  # [R', W, C] exact
        limit = limit if limit is not None else torch.full((rows,), n, device=device)
        valid = torch.arange(got.shape[1], device=device) < limit.unsqueeze(1)  # [R', W]
        assert got.shape == want.shape == (rows, width)
        assert torch.equal(got[~valid], torch.full_like(got[~valid], c)), "padding label != C"
        assert torch.equal(want[~valid], got[~valid])
        assert int(got.min()) >= 0 and int(got[valid].max()) < c
        best = scores.max(-1).values  # [R', W]
        picked = scores.gather(2, got.clamp(max=c - 1).long().unsqueeze(-1)).squeeze(-1)
        gap = max(gap, float(((best - picked) * valid).max()))
    tol = 1e-4 * d**0.5  # fp32 accumulation order vs the exact scores
    assert gap <= tol, f"chosen centroid scores {gap} below the max (tolerance {tol})"
    return gap


def check_sums(
    r: int, n: int, c: int, d: int, dtype: torch.dtype, device: str, seed: int, segments: int = 1
) -> float:
    """Triton cluster sums (plain, shifted + gathered, normalised) vs the reference."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(r, n + 5, d, generator=gen, device=device).to(dtype)[:, 5:]  # strided view
    rows, width = r * segments, -(-n // segments)
    labels = torch.randint(0, c + 1, (rows, width), generator=gen, device=device)
    labels[:, : width // 3] = torch.randint(0, 3, (rows, width // 3), generator=gen, device=device)
    _, seg_len, _ = padded_segments(x, None, None, segments)
    if seg_len is not None:  # positions past a segment's end are padding (label C)
        labels[torch.arange(width, device=device) >= seg_len.unsqueeze(1)] = c
    order, offsets = sort_clusters(labels.to(torch.int32), c)
    shift = torch.randn(r, d, generator=gen, device=device)
    prev = torch.randn(rows, c, d, generator=gen, device=device)
    err = 0.0
    for sh, norm, gather in ((None, None, False), (shift, None, True), (shift, prev, False)):
        got, got_rows = cluster_sums(
            x, order, offsets, sh, norm, gather, use_triton=True, num_segments=segments
        )
        xp, _, shp = padded_segments(x, None, sh, segments)
        want, want_rows = cluster_sums_reference(xp, order, offsets, shp, norm, gather)
        torch.testing.assert_close(got, want, atol=1e-4 * n**0.5, rtol=1e-5)
        err = max(err, float((got - want).abs().max()))
        if gather:
            assert got_rows is not None and want_rows is not None
            for i in range(rows):
                m = int(offsets[i, c])  # rows past the valid ones are unspecified
                assert torch.equal(got_rows[i, :m], want_rows[i, :m])
    return err


def check_build(b: int, h: int, n: int, d: int, n_seg: int, per_seg: int, dtype: torch.dtype,
                device: str, seed: int) -> dict[str, float]:  # fmt: skip
    """Whole build, Triton path: the segment invariants, and the quality (mean squared distance
    key-centroid) within 2% of the torch path's (fp32 on CPU: identical labels)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    keys = (torch.randn(b, h, n + 3, d, generator=gen, device=device) + 0.3).to(dtype)
    keys, values = keys[:, :, 3:], torch.randn_like(keys)[:, :, :n]  # strided, as in prefill
    fast = build_segment(keys, values, 7, 0, 0, n_seg, per_seg, 10, 1000, use_triton=True)
    ref = build_segment(keys, values, 7, 0, 0, n_seg, per_seg, 10, 1000, use_triton=False)
    check_segment(fast, keys, values, 7)
    sse_fast, sse_ref = mean_sq_distance(fast), mean_sq_distance(ref)
    if dtype == torch.float32 and device == "cpu":
        assert torch.equal(fast.positions, ref.positions) and torch.equal(fast.sizes, ref.sizes)
        torch.testing.assert_close(fast.centroids, ref.centroids, atol=1e-5, rtol=1e-5)
    assert sse_fast <= 1.02 * sse_ref, f"Triton build quality {sse_fast} vs torch {sse_ref}"
    return {"sse_triton": sse_fast, "sse_torch": sse_ref}


def check_segment(seg: IndexSegment, keys: torch.Tensor, values: torch.Tensor, first: int) -> None:
    """Every token once, sizes/offsets agree, K/V cluster-major, centroids and value sums are
    the members' means and sums."""
    b, h, n, d = keys.shape
    r = b * h
    pos = seg.positions.reshape(r, n) - first
    assert torch.equal(pos.sort(dim=1).values, torch.arange(n, device=pos.device).expand(r, n))
    assert torch.equal(seg.offsets[..., 0], torch.zeros_like(seg.offsets[..., 0]))
    assert torch.equal(seg.offsets.diff(dim=-1), seg.sizes)
    assert torch.equal(seg.keys.reshape(r, n, d), keys.reshape(r, n, d).gather(1, _idx(pos, d)))
    assert torch.equal(seg.values.reshape(r, n, d), values.reshape(r, n, d).gather(1, _idx(pos, d)))
    run = _runs(seg)  # [R, N]
    c = seg.num_clusters
    sums_k = torch.zeros(r, c, d, dtype=torch.float64, device=keys.device)
    sums_k.scatter_add_(1, _idx(run, d), seg.keys.reshape(r, n, d).double())
    sums_v = torch.zeros(r, c, d, dtype=torch.float64, device=keys.device)
    sums_v.scatter_add_(1, _idx(run, d), seg.values.reshape(r, n, d).double())
    sizes = seg.sizes.reshape(r, c)
    full = sizes > 0
    mean_k = sums_k / sizes.clamp(min=1).unsqueeze(-1)
    cent = seg.centroids.reshape(r, c, d).double()
    torch.testing.assert_close(cent[full], mean_k[full], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        seg.value_sums.reshape(r, c, d).double(), sums_v, atol=1e-3, rtol=1e-4
    )


def mean_sq_distance(seg: IndexSegment) -> float:
    """Mean over tokens of |key - centroid of its cluster|^2 (fp32 keys)."""
    b, h, n, d = seg.keys.shape
    cent = seg.centroids.reshape(b * h, -1, d).gather(1, _idx(_runs(seg), d))
    return float(((seg.keys.reshape(b * h, n, d).float() - cent) ** 2).sum(-1).mean())


def _runs(seg: IndexSegment) -> torch.Tensor:
    """Cluster id of every cluster-major row: [B * Hkv, N] int64."""
    b, h, n, _ = seg.keys.shape
    pos = torch.arange(n, device=seg.keys.device).expand(b * h, n).contiguous()
    ends = seg.offsets.reshape(b * h, -1)[:, 1:].contiguous()
    return torch.searchsorted(ends, pos, right=True)


def _idx(index: torch.Tensor, d: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(*index.shape, d)


def run_interpreted() -> None:
    """Small cases for TRITON_INTERPRET=1 on CPU (the interpreter is slow)."""
    for i, dtype in enumerate((torch.float32, torch.float16, torch.bfloat16)):
        check_assign(3, 70, 45, 24, dtype, "cpu", seed=i)
        check_sums(2, 90, 11, 12, dtype, "cpu", seed=i)
    check_assign(2, 101, 20, 16, torch.bfloat16, "cpu", seed=5, segments=3)
    check_sums(2, 101, 7, 16, torch.float32, "cpu", seed=6, segments=3)
    check_assign(2, 64, 64, 16, torch.bfloat16, "cpu", seed=9)  # whole tiles (EVEN_C)
    check_build(1, 2, 301, 8, 2, 6, torch.float32, "cpu", seed=3)
    check_build(1, 2, 301, 8, 2, 6, torch.bfloat16, "cpu", seed=4)
    print("ok")


if __name__ == "__main__":
    run_interpreted()
