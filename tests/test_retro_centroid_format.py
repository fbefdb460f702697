"""fp8 centroid storage (RetroInferConfig.centroid_format): validation, exactness where ranking
does not matter, closeness to model-dtype centroids, and saturation (torch casts to e4m3 saturate)
instead of NaN."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import RetroInferConfig
from tests.retro_fixtures import make_layer, run_decode

FP8 = {"centroid_format": "fp8_e4m3"}


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


def test_full_retrieval_with_fp8_centroids_is_still_full_attention():
    """Centroids only rank and estimate: retrieving everything must stay exact."""
    cfg = RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0, **FP8)
    gen = torch.Generator().manual_seed(5)
    layer, _ = make_layer(cfg, 8, 2, 32, 2)
    keys, values = torch.randn(2, 2, 2500, 32, generator=gen), torch.randn(2, 2, 2500, 32)
    for ours, ref, _ in run_decode(layer, keys, values, 3, gen):
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)


def test_fp8_centroids_stay_close_to_model_dtype_centroids():
    gen = torch.Generator().manual_seed(7)
    # clustered keys (what ranking is for): 200 directions plus noise
    centres = torch.randn(200, 64, generator=gen) * 2
    keys = centres[torch.randint(0, 200, (1, 4, 6000), generator=gen)]
    keys = keys + 0.3 * torch.randn(keys.shape, generator=gen)
    values = torch.randn(1, 4, 6000, 64, generator=gen)
    outs = []
    for extra in ({}, FP8):
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
