"""The retrieval-budget floor (min_retrieval_clusters) and the dense path below the threshold."""

from __future__ import annotations

import math

import pytest
import torch

from inference_worker.model import AttentionMetadata, FullAttentionBackend
from inference_worker.retroinfer import (
    InProcessClusterSource,
    RetroInferConfig,
    RetroInferLayer,
    StepOptions,
)
from tests.retro_fixtures import make_layer


def test_floor_lifts_short_contexts_only():
    cfg = RetroInferConfig()
    floor = cfg.min_retrieval_clusters
    assert floor > 0
    assert cfg.retrieval_clusters(184) == floor  # ~3K tokens: 1.8% would be 3 clusters
    assert cfg.retrieval_clusters(7_440) == 134  # ~120K tokens: the paper's 1.8% rules
    assert cfg.retrieval_clusters(16) == 16  # never more than C
    assert cfg.retrieval_clusters(0) == 0
    assert cfg.estimation_clusters(184) == round(0.232 * 184)
    assert cfg.estimation_clusters(floor + 3) == 3  # n_ret + n_est <= C
    assert cfg.cache_clusters(184) == round(3.0 * floor)
    assert cfg.exec_buffer_clusters(184) == max(32, 4 * floor)


def test_floor_zero_is_the_papers_fraction_rule():
    cfg = RetroInferConfig(min_retrieval_clusters=0)
    for c in (8, 184, 368, 2_048, 7_440):
        assert cfg.retrieval_clusters(c) == max(round(0.018 * c), 1)
        assert cfg.estimation_clusters(c) == min(round(0.232 * c), c - cfg.retrieval_clusters(c))


@pytest.mark.parametrize("value", [-1, 2.5, True, "32"])
def test_floor_validation_quotes_the_value(value):
    with pytest.raises(
        ValueError, match=f"min_retrieval_clusters must be an int >= 0, got {value!r}"
    ):
        RetroInferConfig(min_retrieval_clusters=value)


@pytest.mark.parametrize("floor", [0, 24])
def test_layer_sizes_follow_the_helper(floor):
    """Step statistics, the selected clusters, the cache and the graph widths all use n_ret."""
    cfg = RetroInferConfig(min_retrieval_clusters=floor)
    gen = torch.Generator().manual_seed(floor)
    layer, _ = make_layer(cfg, 6, 2, 16, 1, options=StepOptions(record_selection=True))
    layer.prefill(
        torch.randn(1, 2, 2100, 16, generator=gen), torch.randn(1, 2, 2100, 16, generator=gen)
    )
    c = layer.num_clusters
    _, stats = layer.decode(
        torch.randn(1, 6, 16, generator=gen),
        torch.randn(1, 2, 16, generator=gen),
        torch.randn(1, 2, 16, generator=gen),
    )
    n_ret = cfg.retrieval_clusters(c)
    assert n_ret == (max(round(0.018 * c), 1) if floor == 0 else floor)
    assert (
        stats.retrieval_clusters == n_ret
        and stats.estimation_clusters == cfg.estimation_clusters(c)
    )
    assert stats.selection is not None and stats.selection["retrieved"].shape[-1] == n_ret
    assert layer.buffer is not None
    assert layer.buffer.pages == math.ceil(
        cfg.cache_clusters(c) * cfg.cluster_size / cfg.page_tokens
    )
    assert layer.state.exec_tokens() == cfg.exec_buffer_clusters(c) * cfg.cluster_size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_dense_path_is_bit_identical_to_full_attention(dtype, batch):
    """No index (prompt below the threshold): decode equals FullAttentionBackend's exactly."""
    hq, hkv, d, length, steps = 9, 3, 64, 300, 5
    gen = torch.Generator().manual_seed(batch)
    keys = torch.randn(batch, hkv, length, d, generator=gen).to(dtype)
    values = torch.randn(batch, hkv, length, d, generator=gen).to(dtype)
    ids = [f"s{b}" for b in range(batch)]
    layer = RetroInferLayer(RetroInferConfig(), 0, hq, hkv, d, InProcessClusterSource(), ids, dtype)
    layer.prefill(keys, values)
    full = FullAttentionBackend(1, hkv, d, batch, length + steps, dtype)
    full.prefill(
        0, torch.zeros(batch, hq, length, d, dtype=dtype), keys, values,
        AttentionMetadata.prefill([0] * batch, [length] * batch),
    )  # fmt: skip
    for step in range(steps):
        q = torch.randn(batch, hq, 1, d, generator=gen).to(dtype)  # [B, Hq, 1, D]
        k = torch.randn(batch, hkv, 1, d, generator=gen).to(dtype)
        v = torch.randn(batch, hkv, 1, d, generator=gen).to(dtype)
        want = full.decode(0, q, k, v, AttentionMetadata.decode([length + step] * batch))
        got, stats = layer.decode(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        assert stats.dense and got.dtype == dtype
        assert torch.equal(got, want[:, :, 0]), (got.float() - want[:, :, 0].float()).abs().max()
