"""Fixed-length attention (CPU) and CUDA-graph decode (CUDA only) vs the eager reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference_worker.model import (
    AttentionMetadata,
    CausalLM,
    FullAttentionBackend,
    GraphedDecoder,
    build_model,
    load_config,
)
from inference_worker.model.safetensors_loader import load_safetensors_state_dict
from tests.model_fixtures import save_tiny, tiny_hf_model

PROMPTS = [[5, 9, 14, 3, 77, 21, 8], [40, 2, 96, 13], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]


FAMILIES = ["llama", "gemma3"]  # gemma3: 5-token windows, decode runs past them


def _model(tmp_path: Path, device: str, family: str = "llama") -> CausalLM:
    folder = save_tiny(tiny_hf_model(family, seed=11), tmp_path)
    config = load_config(folder)
    return build_model(
        config, load_safetensors_state_dict(folder, torch.float32), torch.device(device)
    )


def _prefill(model: CausalLM, backend: FullAttentionBackend) -> torch.Tensor:
    width = max(len(p) for p in PROMPTS)
    tokens = torch.tensor([p + [0] * (width - len(p)) for p in PROMPTS], device=model.device)
    meta = AttentionMetadata.prefill([0] * 3, [len(p) for p in PROMPTS], model.device)
    return model(tokens, meta, backend, last_only=True)  # [B, V]


def _eager_steps(model: CausalLM, backend: FullAttentionBackend, steps: int) -> list[torch.Tensor]:
    """Greedy decode of all rows, eager; logits [B, V] per step."""
    logits, out = _prefill(model, backend), []
    for step in range(steps):
        tokens = logits.argmax(-1)[:, None]  # [B, 1]
        meta = AttentionMetadata.decode([len(p) + step for p in PROMPTS], model.device)
        logits = model(tokens, meta, backend, last_only=True)
        out.append(logits)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_fixed_kv_len_equals_prefix_attention(tmp_path: Path, family: str) -> None:
    model = _model(tmp_path, "cpu", family)
    ref = _eager_steps(model, FullAttentionBackend.for_model(model.config, 3, 32), 6)
    fixed = FullAttentionBackend.for_model(model.config, 3, 32, fixed_kv_len=True)
    torch.testing.assert_close(_eager_steps(model, fixed, 6), ref, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_positions_past_the_cache_write_only_scratch_columns(tmp_path: Path) -> None:
    """GraphedDecoder's warm-up and capture run steps at position S = max_seq_len: they
    must leave every real column of the dense caches and of the rings untouched."""
    model = _model(tmp_path, "cpu", "gemma3")
    backend = FullAttentionBackend.for_model(model.config, 3, 32, fixed_kv_len=True)
    _prefill(model, backend)
    before = [b.clone() for b in (backend.k_cache, backend.v_cache, backend.k_ring, backend.v_ring)]
    meta = AttentionMetadata.decode([0, 0, 0])
    meta.start_pos.fill_(32)
    meta.positions.fill_(32)
    model(torch.tensor([[5], [6], [7]]), meta, backend, last_only=True)
    after = (backend.k_cache, backend.v_cache, backend.k_ring, backend.v_ring)
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(new[..., :-1, :], old[..., :-1, :], atol=0, rtol=0)
    assert not torch.equal(backend.k_ring[..., -1, :], before[2][..., -1, :])


def test_graphed_decoder_rejects_cpu_and_bad_inputs(tmp_path: Path) -> None:
    model = _model(tmp_path, "cpu")
    backend = FullAttentionBackend.for_model(model.config, 3, 32, fixed_kv_len=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model, got device=cpu"):
        GraphedDecoder(model, backend, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_graphed_decode_equals_eager_on_cuda(tmp_path: Path, family: str) -> None:
    model = _model(tmp_path, "cuda", family)
    eager_backend = FullAttentionBackend.for_model(model.config, 3, 32, device="cuda")
    ref = _eager_steps(model, eager_backend, 8)
    backend = FullAttentionBackend.for_model(model.config, 3, 32, device="cuda", fixed_kv_len=True)
    with pytest.raises(ValueError, match="fixed_kv_len=True"):
        GraphedDecoder(model, eager_backend, 3)
    graphed = GraphedDecoder(model, backend, 3)  # captured before the prefill: cache untouched
    logits, got = _prefill(model, backend), []
    for step in range(8):
        logits = graphed.step(logits.argmax(-1), [len(p) + step for p in PROMPTS]).clone()
        got.append(logits)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"start_pos=\[32, 0, 0\]"):
        graphed.step(logits.argmax(-1), [32, 0, 0])
