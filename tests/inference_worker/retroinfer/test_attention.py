"""Tripartite attention vs an independently computed full attention (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import RetroInferConfig, estimate, merge, partial_attention
from tests.retro_fixtures import make_layer, run_decode

FULL = {"retrieval_budget": 1.0, "estimation_budget": 0.0}


@pytest.mark.parametrize(
    ("batch", "hq", "hkv", "d", "length"),
    [
        (1, 9, 3, 64, 1501),
        (2, 32, 8, 32, 1297),
        (1, 9, 3, 64, 9001),
        (2, 9, 3, 16, 37),
        (1, 32, 8, 16, 3),
        (1, 9, 3, 64, 1091),
    ],
)
def test_full_retrieval_equals_full_attention(batch, hq, hkv, d, length):
    gen = torch.Generator().manual_seed(length)
    layer, _ = make_layer(RetroInferConfig(**FULL), hq, hkv, d, batch)
    keys = torch.randn(batch, hkv, length, d, generator=gen)
    values = torch.randn(batch, hkv, length, d, generator=gen)
    for ours, ref, stats in run_decode(layer, keys, values, 3, gen):
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)
        assert stats["overflow_clusters"] == 0 if not stats["dense"] else True
    assert layer.num_clusters > 0 or length < RetroInferConfig().index_threshold


def test_full_retrieval_exact_through_index_updates_and_tiny_cache():
    """Small update interval: the updates, the hits/misses/evictions of a cache that holds a
    fraction of the clusters, and the execution buffer must all stay exact."""
    cfg = RetroInferConfig(
        sink_tokens=2,
        window_tokens=8,
        update_tokens=16,
        update_clusters=2,
        cluster_size=8,
        cache_ratio=0.3,
        **FULL,
    )
    gen = torch.Generator().manual_seed(7)
    layer, _ = make_layer(cfg, 9, 3, 16, 2)
    keys = torch.randn(2, 3, 301, 16, generator=gen)
    values = torch.randn(2, 3, 301, 16, generator=gen)
    results = run_decode(layer, keys, values, 40, gen)
    for ours, ref, _ in results:
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)
    stats = [s for _, _, s in results]
    assert sum(s["index_update"] for s in stats) == 2  # recent window full after 16 and 32 steps
    assert sum(s["hits"] for s in stats) > 0 and sum(s["misses"] for s in stats) > 0
    assert layer.num_clusters == stats[0]["num_clusters"] + 2 * sum(
        s["index_update"] for s in stats
    )


def test_short_prompt_builds_index_from_generated_tokens():
    cfg = RetroInferConfig(
        sink_tokens=4, window_tokens=8, update_tokens=16, update_clusters=2, **FULL
    )
    gen = torch.Generator().manual_seed(3)
    layer, _ = make_layer(cfg, 4, 2, 8, 1)
    keys, values = torch.randn(1, 2, 10, 8, generator=gen), torch.randn(1, 2, 10, 8, generator=gen)
    results = run_decode(layer, keys, values, 30, gen)
    assert results[0][2]["dense"] and not results[-1][2]["dense"]
    for ours, ref, _ in results:
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)


def _brute_force_estimate(z, sizes, value_sums, gen):
    """Expand every cluster j into s_j members with logit z_j and values averaging VS_j/s_j,
    then run plain softmax attention over the members."""
    rows, g, k = z.shape
    out, lses = torch.zeros(rows, g, value_sums.shape[-1], dtype=torch.float64), []
    lse = torch.zeros(rows, g, dtype=torch.float64)
    for r in range(rows):
        logits, vals = [], []
        for j in range(k):
            s = int(sizes[r, j])
            noise = torch.randn(s, value_sums.shape[-1], generator=gen, dtype=torch.float64)
            member_v = value_sums[r, j].double() / s + noise - noise.mean(0)
            logits.append(z[r, :, j : j + 1].double().expand(g, s))
            vals.append(member_v)
        logit = torch.cat(logits, dim=1)  # [G, total]
        lse[r] = torch.logsumexp(logit, dim=1)
        out[r] = torch.softmax(logit, dim=1) @ torch.cat(vals)
    del lses
    return out, lse


def test_estimation_formula_matches_brute_force():
    gen = torch.Generator().manual_seed(11)
    rows, g, k, d = 3, 4, 7, 5
    z = torch.randn(rows, g, k, generator=gen) * 3
    sizes = torch.randint(1, 9, (rows, k), generator=gen)
    value_sums = torch.randn(rows, k, d, generator=gen) * sizes.unsqueeze(-1)
    o, lse = estimate(z, sizes, value_sums, torch.ones(rows, k, dtype=torch.bool))
    ref_o, ref_lse = _brute_force_estimate(z, sizes, value_sums, gen)
    torch.testing.assert_close(o.double(), ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def test_estimation_is_exact_when_keys_equal_centroids():
    """n_ret = 0, n_est = C: estimating every cluster equals exact attention when every member
    key equals its cluster centroid."""
    gen = torch.Generator().manual_seed(5)
    g, d, k = 3, 8, 6
    centroids = torch.randn(1, k, d, generator=gen)
    sizes = torch.randint(1, 6, (1, k), generator=gen)
    members = centroids[0].repeat_interleave(sizes[0], dim=0).unsqueeze(0)  # [1, N, D]
    values = torch.randn(1, members.shape[1], d, generator=gen)
    label = torch.arange(k).repeat_interleave(sizes[0])
    value_sums = torch.zeros(1, k, d).index_add_(1, label, values)
    q = torch.randn(1, g, d, generator=gen)
    z = (q @ centroids.transpose(1, 2)) / d**0.5
    o, lse = estimate(z, sizes, value_sums, torch.ones(1, k, dtype=torch.bool))
    ref_o, ref_lse = partial_attention(
        q, members, values, torch.ones(1, members.shape[1], dtype=torch.bool), d**-0.5
    )
    torch.testing.assert_close(o, ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_lse_merge_of_two_halves_is_full_attention():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, 8, generator=gen)
    k, v = torch.randn(2, 40, 8, generator=gen), torch.randn(2, 40, 8, generator=gen)
    ones = torch.ones(2, 40, dtype=torch.bool)
    half = torch.arange(40) < 13
    o1, l1 = partial_attention(q, k, v, ones & half, 8**-0.5)
    o2, l2 = partial_attention(q, k, v, ones & ~half, 8**-0.5)
    o, _ = partial_attention(q, k, v, ones, 8**-0.5)
    torch.testing.assert_close(merge(o1, l1, o2, l2), o, atol=1e-6, rtol=1e-5)
    empty_o, empty_l = partial_attention(q, k, v, ~ones, 8**-0.5)
    torch.testing.assert_close(merge(o, _, empty_o, empty_l), o)


def test_bad_shapes_name_the_argument():
    layer, _ = make_layer(RetroInferConfig(), 9, 3, 16, 1)
    with pytest.raises(ValueError, match=r"keys must have shape \[B, Hkv, L, D\] = \[1, 3"):
        layer.prefill(torch.zeros(1, 4, 10, 16), torch.zeros(1, 4, 10, 16))
    with pytest.raises(RuntimeError, match="before prefill"):
        layer.decode(torch.zeros(1, 9, 16), torch.zeros(1, 3, 16), torch.zeros(1, 3, 16))
    layer.prefill(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))
    with pytest.raises(
        ValueError, match=r"q must have shape \[B, Hq, D\] = \[1, 9, 16\], got \[1, 8"
    ):
        layer.decode(torch.zeros(1, 8, 16), torch.zeros(1, 3, 16), torch.zeros(1, 3, 16))
    with pytest.raises(ValueError, match="v_new must have shape"):
        layer.decode(torch.zeros(1, 9, 16), torch.zeros(1, 3, 16), torch.zeros(1, 2, 16))


def test_wave_buffer_does_not_change_the_output():
    """The paper's budgets (no n_ret floor: 3 of 184 clusters) with slowly drifting queries: a
    small cache (hits, misses, evictions) gives the same output as no cache at all (every cluster
    fetched each step)."""
    gen = torch.Generator().manual_seed(13)
    d, length, steps = 16, 3000, 12
    keys = torch.randn(2, 3, length, d, generator=gen)
    values = torch.randn(2, 3, length, d, generator=gen)
    q0 = torch.randn(2, 9, d, generator=gen) * 3
    drift = [q0 + 0.8 * torch.randn(2, 9, d, generator=gen) for _ in range(steps)]
    new_kv = [torch.randn(2, 2, 3, d, generator=gen) for _ in range(steps)]
    outs, totals = [], []
    for ratio in (0.04, 0.0):
        config = RetroInferConfig(cache_ratio=ratio, min_retrieval_clusters=0)
        layer, _ = make_layer(config, 9, 3, d, 2)
        layer.prefill(keys, values)
        run = [layer.decode(q, kv[0], kv[1]) for q, kv in zip(drift, new_kv, strict=True)]
        outs.append(torch.stack([o for o, _ in run]))
        totals.append({k: sum(s.as_dict()[k] for _, s in run) for k in ("hits", "evicted")})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert totals[0]["hits"] > 0 and totals[0]["evicted"] > 0
    assert totals[1] == {"hits": 0, "evicted": 0}


def test_prefill_twice_is_refused():
    layer, _ = make_layer(RetroInferConfig(), 9, 3, 16, 1)
    layer.prefill(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))
    with pytest.raises(RuntimeError, match="prefill\\(\\) already called for layer 0"):
        layer.prefill(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))
