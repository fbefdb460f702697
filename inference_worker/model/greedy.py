"""Minimal single-sequence greedy decoding over any backend (tests, docs, sanity checks).

The engine has its own batched sampling loop; this is the plain reference for one sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inference_worker.model.attention import AttentionBackend, AttentionMetadata
from inference_worker.model.llama import CausalLM


@torch.inference_mode()
def prefill_chunked(
    model: CausalLM,
    backend: AttentionBackend,
    prompt: Sequence[int],
    chunk_size: int = 512,
    slot: int = 0,
) -> torch.Tensor:
    """Run the prompt through the model in chunks; returns logits [V] after the last token."""
    if not prompt or chunk_size < 1:
        raise ValueError(f"prompt of {len(prompt)} tokens and chunk_size={chunk_size} must be >= 1")
    logits = None
    for start in range(0, len(prompt), chunk_size):
        chunk = list(prompt[start : start + chunk_size])
        meta = AttentionMetadata.prefill([start], [len(chunk)], model.device, slots=[slot])
        tokens = torch.tensor([chunk], device=model.device)  # [1, T]
        logits = model(tokens, meta, backend, last_only=True)[0]  # [V]
    assert logits is not None
    return logits


@torch.inference_mode()
def greedy_generate(
    model: CausalLM,
    backend: AttentionBackend,
    prompt: Sequence[int],
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    chunk_size: int = 512,
) -> list[int]:
    """Greedy continuation of `prompt` (cache row 0); stops after a stop token or the budget."""
    logits = prefill_chunked(model, backend, prompt, chunk_size)
    out: list[int] = []
    for step in range(max_new_tokens):
        token = int(logits.argmax())
        out.append(token)
        if token in stop_token_ids or step == max_new_tokens - 1:
            break
        meta = AttentionMetadata.decode([len(prompt) + step], model.device, slots=[0])
        tokens = torch.tensor([[token]], device=model.device)  # [1, 1]
        logits = model(tokens, meta, backend, last_only=True)[0]  # [V]
    return out
