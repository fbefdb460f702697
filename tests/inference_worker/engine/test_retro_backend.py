"""Below the index threshold RetroInfer attends densely: bit-identical to full attention (issue 4).

The real default model, on CPU, in fp32 and bf16: the same prompt is prefilled and then teacher-
forced through FullAttentionBackend and through RetroInferBackend (no index: the prompt is shorter
than RetroInferConfig.index_threshold); every step's logits must be equal, not merely close.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from inference_worker.engine import GenerationEngine, InProcessStoreLink
from inference_worker.engine.retro_backend import RetroInferBackend
from inference_worker.model import AttentionBackend, AttentionMetadata, LoadedModel, load_model
from inference_worker.retroinfer import RetroInferConfig
from tests.engine_fixtures import natural_tokens

pytestmark = pytest.mark.slow

STEPS = 12  # teacher-forced decode steps after the prompt
# the longest prompt whose STEPS forced tokens all stay below the threshold (no index update)
LONGEST = RetroInferConfig().index_threshold - STEPS - 1
CHUNK = 1024  # the engine's prefill chunk


@pytest.fixture
def bf16_model() -> LoadedModel:
    return load_model(device="cpu", dtype=torch.bfloat16)


@torch.inference_mode()
def forced_logits(
    loaded: LoadedModel, backend: AttentionBackend, prompt: Sequence[int], forced: Sequence[int]
) -> torch.Tensor:
    """Logits [1 + len(forced), V]: after the (chunked) prefill, then after each forced token."""
    dev, out = loaded.device, []
    tokens = torch.tensor([list(prompt)], device=dev)  # [1, L]
    for start in range(0, tokens.shape[1], CHUNK):
        chunk = tokens[:, start : start + CHUNK]  # [1, T]
        meta = AttentionMetadata.prefill([start], [chunk.shape[1]], dev)
        logits = loaded.model(chunk, meta, backend, last_only=True)  # [1, V]
    out.append(logits)
    for step, token in enumerate(forced):
        meta = AttentionMetadata.decode([len(prompt) + step], dev)
        out.append(loaded.model(torch.tensor([[token]], device=dev), meta, backend, last_only=True))
    return torch.cat(out)  # [1 + S, V]


def retro_backend(loaded: LoadedModel, prompt_len: int) -> RetroInferBackend:
    backend = RetroInferBackend(
        loaded.config, RetroInferConfig(), InProcessStoreLink(), 1, loaded.dtype, loaded.device
    )
    backend.begin_prefill(0, "dense", prompt_len)
    return backend


def assert_identical(loaded: LoadedModel, tokens: list[int], prompt_len: int) -> None:
    prompt, forced = tokens[:prompt_len], tokens[prompt_len:]
    full = forced_logits(loaded, loaded.new_full_attention(1, len(tokens)), prompt, forced)
    backend = retro_backend(loaded, prompt_len)
    retro = forced_logits(loaded, backend, prompt, forced)
    assert backend.layers[0].num_clusters == 0  # the dense path, not the index
    assert full.dtype == retro.dtype == loaded.dtype
    diff = (full.float() - retro.float()).abs().max().item()
    assert torch.equal(full, retro), f"{loaded.dtype}: logits differ by up to {diff}"


def test_dense_path_is_full_attention_fp32(default_engine: GenerationEngine) -> None:
    loaded = default_engine.loaded
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert_identical(loaded, natural_tokens(default_engine, 500, LONGEST + STEPS), LONGEST)


def test_dense_path_is_full_attention_bf16(
    default_engine: GenerationEngine, bf16_model: LoadedModel
) -> None:
    tokens = natural_tokens(default_engine, 500, LONGEST + STEPS)
    assert_identical(bf16_model, tokens, LONGEST)
