"""Batched sequences of different lengths, chunked prefill, cache slots, and bad inputs (fast)."""

from __future__ import annotations

import math

import pytest
import torch

from inference_worker.model import (
    AttentionBackend,
    AttentionMetadata,
    CausalLM,
    FullAttentionBackend,
    ModelConfig,
    RopeScaling,
)
from tests.model_fixtures import hf_logits, load_ours, save_tiny, tiny_hf_model

ATOL = 2e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    hf = tiny_hf_model("llama", seed=5)
    return hf, load_ours(save_tiny(hf, tmp_path_factory.mktemp("llama")))


def _seqs(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]


def _padded(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])  # [B, T]


def test_batched_prefill_and_decode_with_slots(pair) -> None:
    """Three sequences of different lengths in cache rows [2, 0, 1], then 4 batched steps."""
    hf, ours = pair
    prompts, slots = _seqs([9, 11, 8], seed=1), [2, 0, 1]
    extra = [[7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18]]
    backend = FullAttentionBackend.for_model(ours.config, 3, 32)
    meta = AttentionMetadata.prefill([0, 0, 0], [len(p) for p in prompts], slots=slots)
    with torch.inference_mode():
        got_prefill = ours(_padded(prompts), meta, backend, last_only=True)  # [B, V]
        steps = []
        for step in range(4):
            starts = [len(p) + step for p in prompts]
            tokens = torch.tensor([[e[step]] for e in extra])  # [B, 1]
            steps.append(ours(tokens, AttentionMetadata.decode(starts, slots=slots), backend)[:, 0])
    for b, prompt in enumerate(prompts):
        ref = hf_logits(hf, prompt + extra[b])  # [T, V]
        n = len(prompt)
        torch.testing.assert_close(got_prefill[b], ref[n - 1], atol=ATOL, rtol=0)
        torch.testing.assert_close(torch.stack([s[b] for s in steps]), ref[n:], atol=ATOL, rtol=0)


def test_chunked_prefill_equals_one_shot(pair) -> None:
    hf, ours = pair
    ids = _seqs([30], seed=2)[0]
    backend = FullAttentionBackend.for_model(ours.config, 1, 64)
    got = []
    with torch.inference_mode():
        for start in range(0, 30, 8):
            chunk = ids[start : start + 8]
            meta = AttentionMetadata.prefill([start], [len(chunk)], chunk_len=8)
            got.append(
                ours(_padded([chunk + [0] * (8 - len(chunk))]), meta, backend)[0, : len(chunk)]
            )
    torch.testing.assert_close(torch.cat(got), hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_batched_chunks_with_ragged_starts(pair) -> None:
    """Two rows continue prefill from different cached lengths in one call."""
    hf, ours = pair
    a, b = _seqs([14, 20], seed=3)
    backend = FullAttentionBackend.for_model(ours.config, 2, 32)
    with torch.inference_mode():
        ours(_padded([a[:5], b[:11]]), AttentionMetadata.prefill([0, 0], [5, 11]), backend)
        meta = AttentionMetadata.prefill([5, 11], [9, 9])
        out = ours(_padded([a[5:], b[11:]]), meta, backend)  # [2, 9, V]
    torch.testing.assert_close(out[0], hf_logits(hf, a)[5:], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], hf_logits(hf, b)[11:], atol=ATOL, rtol=0)


def _reference_attention(q, keys, values, positions, window=None):
    """Plain softmax attention: q [B,Hq,T,D], keys/values [B,Hkv,S,D], positions [B,T]."""
    group = q.shape[1] // keys.shape[1]
    k = keys.repeat_interleave(group, dim=1)  # [B, Hq, S, D]
    v = values.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, Hq, T, S]
    cols = torch.arange(k.shape[2])
    allowed = cols <= positions[:, :, None]  # [B, T, S]
    if window is not None:
        allowed &= positions[:, :, None] - cols < window
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("window", [None, 3])
def test_backend_matches_plain_softmax_reference(window) -> None:
    torch.manual_seed(7)
    backend: AttentionBackend = FullAttentionBackend(1, 2, 8, 2, 16, sliding_window=window)
    keys, values = torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)  # [B, Hkv, S, D]
    q = torch.randn(2, 6, 10, 8)  # [B, Hq, T, D]
    backend.prefill(
        0, q[:, :, :6], keys[:, :, :6], values[:, :, :6], AttentionMetadata.prefill([0, 0], [6, 6])
    )
    meta = AttentionMetadata.prefill([6, 6], [4, 4])
    out = backend.prefill(0, q[:, :, 6:], keys[:, :, 6:], values[:, :, 6:], meta)
    ref = _reference_attention(q, keys, values, torch.arange(10).expand(2, 10), window)
    torch.testing.assert_close(out, ref[:, :, 6:], atol=1e-5, rtol=0)


def test_metadata_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"num_tokens=\[0, 3\]"):
        AttentionMetadata.prefill([0, 0], [0, 3])
    with pytest.raises(ValueError, match=r"start_pos=\[-1\]"):
        AttentionMetadata.decode([-1])
    with pytest.raises(ValueError, match=r"slots=\[1, 1\]"):
        AttentionMetadata.decode([3, 4], slots=[1, 1])
    with pytest.raises(ValueError, match=r"num_tokens=\[5\] must lie in \[1, chunk_len=4\]"):
        AttentionMetadata.prefill([0], [5], chunk_len=4)


def test_backend_rejects_overflow(pair) -> None:
    _, ours = pair
    backend = FullAttentionBackend.for_model(ours.config, 2, 8)
    with pytest.raises(ValueError, match="sequence length 9 exceeds the cache's max_seq_len=8"):
        _forward(ours, backend, [1] * 9, AttentionMetadata.prefill([0], [9]))
    with pytest.raises(ValueError, match="cache row 2 but max_batch_size=2"):
        _forward(ours, backend, [1], AttentionMetadata.decode([0], slots=[2]))


def _forward(model: CausalLM, backend, ids: list[int], meta: AttentionMetadata) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]), meta, backend)


def test_config_rejects_bad_values() -> None:
    base = dict(
        family="llama",
        vocab_size=10,
        hidden_size=8,
        intermediate_size=8,
        num_layers=1,
        num_heads=3,
        num_kv_heads=2,
        head_dim=4,
    )
    with pytest.raises(
        ValueError, match="num_heads=3 must be a positive multiple of num_kv_heads=2"
    ):
        ModelConfig(**base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        ModelConfig.from_hf_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        RopeScaling(rope_type="yarn")
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        ModelConfig.from_hf_dict({"model_type": "llama", "hidden_act": "gelu"})
