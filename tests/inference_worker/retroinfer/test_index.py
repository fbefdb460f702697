"""Narrow centroid storage (RetroInferConfig.centroid_format: fp8, int8 with per-centroid
scales): validation, exactness where ranking does not matter, closeness to model-dtype centroids,
int8 quantization bounds, and saturation (clamped before the cast) instead of NaN."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import RetroInferConfig
from inference_worker.retroinfer.index import quantize_centroids
from inference_worker.retroinfer.kernels import rank_select
from tests.inference_worker.retroinfer.kernels.cases import rank_case
from tests.retro_fixtures import make_layer, run_decode

FP8 = {"centroid_format": "fp8_e4m3"}
MODEL = {"centroid_format": "model"}  # the model dtype (the paper's storage)


@pytest.mark.parametrize("value", ["fp8", "bf16", "", None])
def test_unknown_format_is_refused_naming_field_and_value(value):
    with pytest.raises(ValueError, match=f"centroid_format must be one of .*got {value!r}"):
        RetroInferConfig(centroid_format=value)


def test_centroids_are_stored_in_fp8_and_value_sums_are_not():
    layer, _ = make_layer(RetroInferConfig(**FP8), 8, 2, 32, 1)
    gen = torch.Generator().manual_seed(0)
    layer.prefill(torch.randn(1, 2, 3000, 32, generator=gen), torch.randn(1, 2, 3000, 32))
    assert layer.meta.centroids.dtype == torch.float8_e4m3fn
    assert layer.meta.value_sums.dtype == torch.float32
    assert layer.num_clusters > 0


def test_fp8_centroids_stay_close_to_model_dtype_centroids():
    gen = torch.Generator().manual_seed(7)
    # clustered keys (what ranking is for): 200 directions plus noise
    centres = torch.randn(200, 64, generator=gen) * 2
    keys = centres[torch.randint(0, 200, (1, 4, 6000), generator=gen)]
    keys = keys + 0.3 * torch.randn(keys.shape, generator=gen)
    values = torch.randn(1, 4, 6000, 64, generator=gen)
    outs = []
    for extra in (MODEL, FP8):
        layer, _ = make_layer(RetroInferConfig(**extra), 16, 4, 64, 1)
        outs.append(run_decode(layer, keys, values, 4, torch.Generator().manual_seed(8)))
    for (base, ref, _), (fp8, _, _) in zip(*outs, strict=True):
        cos = torch.nn.functional.cosine_similarity(fp8.double(), base.double(), dim=-1)
        assert cos.min() > 0.98, cos.min()
        err_fp8 = (fp8.double() - ref).norm() / ref.norm()
        err_base = (base.double() - ref).norm() / ref.norm()
        assert err_fp8 < err_base + 0.05, (err_fp8, err_base)


def test_out_of_range_centroids_saturate_instead_of_nan():
    gen = torch.Generator().manual_seed(3)
    keys = torch.randn(1, 2, 3000, 16, generator=gen)
    keys[..., 0] += 2000.0  # beyond e4m3's largest finite value (448)
    layer, _ = make_layer(RetroInferConfig(**FP8), 4, 2, 16, 1)
    outs = run_decode(layer, keys, torch.randn(1, 2, 3000, 16, generator=gen), 2, gen)
    cent = layer.meta.centroids.float()
    assert torch.isfinite(cent).all()
    assert cent[..., 0].max() == torch.finfo(torch.float8_e4m3fn).max
    assert all(torch.isfinite(ours).all() for ours, _, _ in outs)


INT8 = {"centroid_format": "int8"}


def test_int8_centroids_are_the_default_stored_with_one_scale_each():
    assert RetroInferConfig().centroid_format == "int8"
    layer, _ = make_layer(RetroInferConfig(), 8, 2, 32, 1)
    gen = torch.Generator().manual_seed(0)
    layer.prefill(torch.randn(1, 2, 3000, 32, generator=gen), torch.randn(1, 2, 3000, 32))
    meta = layer.meta
    assert meta.centroids.dtype == torch.int8 and meta.value_sums.dtype == torch.float32
    assert meta.centroid_scale is not None
    assert meta.centroid_scale.shape == meta.centroids.shape[:-1] == meta.sizes.shape
    assert layer.num_clusters > 0


def test_quantize_centroids_error_is_at_most_half_a_step():
    gen = torch.Generator().manual_seed(1)
    cent = torch.randn(3, 50, 64, generator=gen) * torch.rand(3, 50, 1, generator=gen) * 10
    cent[0, 0] = 0.0  # an empty cluster's centroid: scale 0, stays exactly 0
    q, scale = quantize_centroids(cent)
    assert q.dtype == torch.int8 and scale.shape == (3, 50)
    assert int(q.abs().max()) == 127 and scale[0, 0] == 0 and bool((q[0, 0] == 0).all())
    err = (q.float() * scale.unsqueeze(-1) - cent).abs()
    assert bool((err <= scale.unsqueeze(-1) / 2 + 1e-6).all())


@pytest.mark.parametrize("fmt", [FP8, INT8])
def test_full_retrieval_with_narrow_centroids_is_still_full_attention(fmt):
    """Centroids only rank and estimate: retrieving everything must stay exact."""
    cfg = RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0, **fmt)
    gen = torch.Generator().manual_seed(5)
    layer, _ = make_layer(cfg, 8, 2, 32, 2)
    keys, values = torch.randn(2, 2, 2500, 32, generator=gen), torch.randn(2, 2, 2500, 32)
    for ours, ref, _ in run_decode(layer, keys, values, 3, gen):
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)


def test_int8_centroids_rank_like_model_dtype_centroids():
    """Clustered keys: the output with int8 centroids stays with the model-dtype one (and as
    close to exact attention), and the ranking keeps nearly every retrieved cluster."""
    gen = torch.Generator().manual_seed(7)
    centres = torch.randn(200, 64, generator=gen) * 2
    keys = centres[torch.randint(0, 200, (1, 4, 6000), generator=gen)]
    keys = keys + 0.3 * torch.randn(keys.shape, generator=gen)
    values = torch.randn(1, 4, 6000, 64, generator=gen)
    outs, layers = [], []
    for extra in (MODEL, INT8):
        layer, _ = make_layer(RetroInferConfig(**extra), 16, 4, 64, 1)
        layers.append(layer)
        outs.append(run_decode(layer, keys, values, 4, torch.Generator().manual_seed(8)))
    for (base, ref, _), (got, _, _) in zip(*outs, strict=True):
        cos = torch.nn.functional.cosine_similarity(got.double(), base.double(), dim=-1)
        assert cos.min() > 0.995, cos.min()  # fp8 (above): 0.98
        err = (got.double() - ref).norm() / ref.norm()
        err_base = (base.double() - ref).norm() / ref.norm()
        assert err < err_base * 1.1 + 1e-3, (err, err_base)
    q = torch.randn(4, 4, 64, generator=gen)  # a fresh query per KV head (group of 4)
    base_meta, int8_meta = layers[0].meta, layers[1].meta
    assert int8_meta.centroid_scale is not None
    n = layers[0].config.retrieval_clusters(layers[0].num_clusters)
    picks = [
        rank_select(q, m.centroids[0], m.sizes[0], 0.125, n, 0, centroid_scale=cs).retrieved
        for m, cs in ((base_meta, None), (int8_meta, int8_meta.centroid_scale[0]))
    ]
    kept = sum(torch.isin(b, a).float().mean() for a, b in zip(*picks, strict=True)) / 4
    assert kept > 0.95, kept


def test_rank_select_refuses_a_scale_without_int8_centroids_and_the_reverse():
    case = rank_case(2, 4, 64, 16, torch.float32, "cpu", seed=0)
    with pytest.raises(ValueError, match="centroid_scale is needed exactly for int8"):
        rank_select(**case, centroid_scale=torch.ones(2, 64))
    case["centroids"] = quantize_centroids(case["centroids"])[0]
    with pytest.raises(ValueError, match=r"int8 centroids, got centroids torch\.int8"):
        rank_select(**case)
