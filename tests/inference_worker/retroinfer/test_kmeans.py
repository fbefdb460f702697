"""Wave index build: k-means invariants and the batched build vs a plain per-segment reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_worker.retroinfer import RetroInferConfig, build_segment, segmented_kmeans
from inference_worker.retroinfer.kmeans_common import segment_bounds


def _reference_kmeans(keys, n_seg, per_seg, iterations):
    """Plain loops over rows and segments, the design page's steps one by one."""
    rows, n, _ = keys.shape
    bounds = segment_bounds(n, n_seg, keys.device).tolist()
    all_labels, all_centroids = [], []
    for r in range(rows):
        mean = keys[r].mean(0)
        x = keys[r] - mean
        units = []
        for s in range(n_seg):
            seg = x[bounds[s] : bounds[s + 1]]
            length = seg.shape[0]
            c = F.normalize(
                seg[[int((i + 0.5) * length / per_seg) for i in range(per_seg)]], dim=-1
            )
            for _ in range(iterations - 1):
                lab = (seg @ c.T).argmax(1)
                for j in range(per_seg):
                    if (lab == j).any():
                        c[j] = F.normalize(seg[lab == j].sum(0), dim=0)
            units.append(c)
        unit = torch.cat(units)
        lab = (x @ unit.T).argmax(1)
        cent = torch.stack(
            [x[lab == j].mean(0) + mean if (lab == j).any() else mean for j in range(unit.shape[0])]
        )
        all_labels.append(lab)
        all_centroids.append(cent)
    return torch.stack(all_labels), torch.stack(all_centroids)


@pytest.mark.parametrize(("n", "n_seg", "per_seg"), [(517, 3, 8), (256, 1, 16), (1001, 4, 5)])
def test_batched_kmeans_matches_plain_reference(n, n_seg, per_seg):
    gen = torch.Generator().manual_seed(n)
    keys = torch.randn(5, n, 12, generator=gen, dtype=torch.float64).float()
    labels, centroids, sizes = segmented_kmeans(keys, n_seg, per_seg, 10)
    ref_labels, ref_centroids = _reference_kmeans(keys, n_seg, per_seg, 10)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(centroids, ref_centroids, atol=1e-5, rtol=1e-5)
    assert torch.equal(
        sizes, torch.stack([torch.bincount(r, minlength=n_seg * per_seg) for r in ref_labels])
    )


def test_segment_invariants():
    gen = torch.Generator().manual_seed(1)
    b, h, n, d = 2, 3, 777, 8
    keys, values = torch.randn(b, h, n, d, generator=gen), torch.randn(b, h, n, d, generator=gen)
    seg = build_segment(
        keys,
        values,
        first_position=4,
        layer=2,
        first_cluster=0,
        num_segments=3,
        clusters_per_segment=8,
        iterations=10,
        final_chunk=100,
    )
    c = seg.num_clusters
    assert c == 24 and seg.layer == 2
    assert torch.equal(seg.sizes.sum(-1), torch.full((b, h), n))
    assert torch.equal(seg.offsets[..., 0], torch.zeros(b, h, dtype=torch.int64))
    assert torch.equal(seg.offsets.diff(dim=-1), seg.sizes)
    for bi in range(b):
        for hi in range(h):
            pos = seg.positions[bi, hi]
            assert torch.equal(pos.sort().values, torch.arange(4, 4 + n))  # each token once
            assert torch.equal(seg.keys[bi, hi], keys[bi, hi, pos - 4])
            assert torch.equal(seg.values[bi, hi], values[bi, hi, pos - 4])
            for j in range(c):
                lo, hi_ = int(seg.offsets[bi, hi, j]), int(seg.offsets[bi, hi, j + 1])
                members_k, members_v = seg.keys[bi, hi, lo:hi_], seg.values[bi, hi, lo:hi_]
                torch.testing.assert_close(
                    seg.value_sums[bi, hi, j], members_v.sum(0), atol=1e-5, rtol=1e-5
                )
                if hi_ > lo:
                    torch.testing.assert_close(
                        seg.centroids[bi, hi, j], members_k.mean(0), atol=1e-5, rtol=1e-5
                    )


def test_cluster_count_rule():
    cfg = RetroInferConfig()
    n_seg = cfg.num_segments(120_000)
    assert n_seg == 15
    c = cfg.num_clusters(120_000 - 68, n_seg)
    assert c % 120 == 0 and abs(c - 7_500) <= 120
    assert cfg.retrieval_clusters(7_440) == 134 and cfg.estimation_clusters(7_440) == 1_726
    assert cfg.num_clusters(1024, 1) == 64


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retrieval_budget", 1.5, "retrieval_budget must be a number in [0, 1], got 1.5"),
        ("page_tokens", 0, "page_tokens must be an int >= 1, got 0"),
        ("defer_warmup_steps", -1, "defer_warmup_steps must be an int >= 0, got -1"),
        ("cache_ratio", -0.1, "cache_ratio must be a number in [0, 1], got -0.1"),
        ("update_clusters", 2048, "update_clusters must be <= update_tokens, got 2048 > 1024"),
    ],
)
def test_config_validation_quotes_values(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RetroInferConfig(**{field: value})
    with pytest.raises(ValueError, match=r"retrieval_budget \+ estimation_budget must be <= 1"):
        RetroInferConfig(retrieval_budget=0.5, estimation_budget=0.6)
