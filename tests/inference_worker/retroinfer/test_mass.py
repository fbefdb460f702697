"""Sampled retrieval quality (mass.py) against a plain per-cluster reference, on fresh random
inputs, and its plumbing through the layer's options."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import (
    InProcessClusterSource,
    RetroInferConfig,
    RetroInferLayer,
    StepOptions,
)
from inference_worker.retroinfer.mass import ZONES, attention_mass

HQ, HKV, D, PROMPT = 4, 2, 16, 2048


def _layer(config: RetroInferConfig, options: StepOptions, seed: int) -> RetroInferLayer:
    torch.manual_seed(seed)
    source = InProcessClusterSource()
    ids = ["a", "b"]
    layer = RetroInferLayer(config, 0, HQ, HKV, D, source, ids, options=options)
    keys, values = torch.randn(2, HKV, PROMPT, D), torch.randn(2, HKV, PROMPT, D)
    for segment in layer.prefill(keys, values):
        source.put(ids, segment)
    return layer


def _steps(layer: RetroInferLayer, n: int) -> list[dict[str, torch.Tensor] | None]:
    out = []
    for _ in range(n):
        q = torch.randn(2, HQ, D) * 3  # peaked attention: zones matter
        _, stats = layer.decode(q, torch.randn(2, HKV, D), torch.randn(2, HKV, D))
        out.append(stats.selection)
    return out


def _reference(
    layer: RetroInferLayer, q: torch.Tensor, pos: torch.Tensor, ret: torch.Tensor,
    est: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """[R, 4]: each cluster fetched on its own, softmax over [valid steady | clusters]."""
    st, out = layer.state, []
    sizes = st.meta.sizes.reshape(st.rows, -1)
    st_k, _ = st.steady_rows()
    for row in range(st.rows):
        b, h = divmod(row, st.kv_heads)
        keys, zones = [st_k[row, : int(pos[row]) + 1]], [0] * (int(pos[row]) + 1)
        for j in range(sizes.shape[1]):
            if sizes[row, j] == 0:
                continue
            ids = torch.full((st.batch, st.kv_heads, 1), -1)
            ids[b, h, 0] = j
            got = st.source.fetch(0, st.sequence_ids, ids, int(sizes[row, j]))
            n = int(got.offsets[b, h, -1])
            keys.append(got.keys[b, h, :n])
            zone = 1 if j in ret[row].tolist() else 2 if j in est[row].tolist() else 3
            zones += [zone] * n
        p = torch.softmax(q[row] @ torch.cat(keys).T * st.scale, dim=-1).mean(0)  # [T]
        out.append(torch.zeros(4).scatter_add_(0, torch.tensor(zones), p))
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1])
@torch.inference_mode()
def test_mass_equals_a_per_cluster_reference(seed: int) -> None:
    layer = _layer(RetroInferConfig(), StepOptions(record_selection=True), seed)
    (sel,) = _steps(layer, 1)
    assert sel is not None
    st, r = layer.state, layer.rows
    q = torch.randn(r, HQ // HKV, D) * 3
    pos = st.pos.clone() - 1  # the last step's token positions
    ret = sel["retrieved"].view(r, -1)
    est = torch.where(sel["estimated_mask"], sel["estimated"], -1).view(r, -1)
    got = attention_mass(st, q, pos, ret, est)
    want = _reference(layer, q, pos, ret, est)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(r), atol=1e-5, rtol=0)
    assert (got[:, 1] > 0).all() and (got[:, 3] > 0).all()  # something retrieved, some dropped


@torch.inference_mode()
def test_layer_samples_every_nth_step_per_slot() -> None:
    layer = _layer(RetroInferConfig(), StepOptions(mass_every=2), 2)
    _steps(layer, 5)  # steps 0, 2, 4 sampled
    for slot in (0, 1):
        summary = layer.mass.summary(slot)
        assert summary is not None and summary["samples"] == 3
        assert sum(summary[z] for z in ZONES) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 < summary["retrieved"] < 1.0 and summary["dropped"] > 0.0
    layer.release(1)
    assert layer.mass.summary(0) is not None


@torch.inference_mode()
def test_full_budget_leaves_nothing_estimated_or_dropped() -> None:
    everything = RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0)
    layer = _layer(everything, StepOptions(mass_every=1), 3)
    _steps(layer, 2)
    summary = layer.mass.summary(0)
    assert summary is not None and summary["samples"] == 2
    assert summary["steady"] + summary["retrieved"] == pytest.approx(1.0, abs=1e-5)
    assert summary["estimated"] == summary["dropped"] == 0.0


def test_mass_every_is_validated() -> None:
    with pytest.raises(ValueError, match="mass_every must be an int >= 0, got -1"):
        StepOptions(mass_every=-1)
