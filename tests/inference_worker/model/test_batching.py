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


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Llama, and Gemma 3 with 5-token windows on its local layers (every test below runs
    prompts and decodes longer than the window)."""
    hf = tiny_hf_model(request.param, seed=5)
    return hf, load_ours(save_tiny(hf, tmp_path_factory.mktemp(request.param)))


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


@pytest.mark.parametrize("size", [3, 8])
def test_chunked_prefill_equals_one_shot(pair, size: int) -> None:
    """Chunks shorter and longer than Gemma's 5-token window, padded to a fixed width."""
    hf, ours = pair
    ids = _seqs([30], seed=2)[0]
    backend = FullAttentionBackend.for_model(ours.config, 1, 64)
    got = []
    with torch.inference_mode():
        for start in range(0, 30, size):
            chunk = ids[start : start + size]
            meta = AttentionMetadata.prefill([start], [len(chunk)], chunk_len=size)
            got.append(
                ours(_padded([chunk + [0] * (size - len(chunk))]), meta, backend)[0, : len(chunk)]
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_global_and_ring_layers_match_plain_reference(seed: int) -> None:
    """Layer 0 global, layers 1-2 with a 4-token window (a ring of 4 columns): three rows in
    permuted cache slots, ragged chunked prefill from different starts, then decode steps
    far past the window; every real output equals plain softmax attention over the history.
    A stale row (slot 3, filled by an earlier longer sequence) is reused from position 0."""
    g = torch.Generator().manual_seed(seed)
    hq, hkv, d, total, window = 4, 2, 8, 24, 4
    backend = FullAttentionBackend(3, hkv, d, 4, total, sliding_window=[None, window, window])
    q = torch.randn(3, 3, hq, total, d, generator=g)  # [L, B, Hq, S, D]
    k, v = torch.randn(2, 3, 3, hkv, total, d, generator=g)  # [L, B, Hkv, S, D] each
    stale = AttentionMetadata.prefill([0], [total], slots=[3])
    for layer in range(3):
        backend.prefill(layer, q[layer, :1] + 1, k[layer, :1] + 1, v[layer, :1] - 1, stale)
    slots, done = [3, 0, 2], [0, 0, 0]
    calls = [[5, 1, 9], [2, 7, 1], [9, 3, 6]]  # per call, real tokens of each row
    calls += [[1, 1, 1]] * (total - 16)  # decode steps
    for counts in calls:
        width = max(counts)
        meta = (
            AttentionMetadata.decode(done, slots=slots)
            if width == 1
            else AttentionMetadata.prefill(done, counts, slots=slots, chunk_len=width)
        )
        for layer in range(3):
            out = _call(backend, layer, meta, q[layer], k[layer], v[layer], done, width)
            ref = _reference_attention(
                q[layer],
                k[layer],
                v[layer],
                torch.arange(total).expand(3, total),
                window=None if layer == 0 else window,
            )  # [B, Hq, S, D]
            for b in range(3):
                got, want = out[b, :, : counts[b]], ref[b, :, done[b] : done[b] + counts[b]]
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        done = [s + n for s, n in zip(done, counts, strict=True)]


def _call(backend, layer, meta, q, k, v, starts, width):  # type: ignore[no-untyped-def]
    """One call of `width` tokens per row from each row's start (right-padded with noise)."""
    cols = torch.stack([torch.arange(s, s + width).clamp(max=q.shape[2] - 1) for s in starts])
    pick = cols[:, None, :, None]  # [B, 1, T, 1]
    take = lambda x: x.gather(2, pick.expand(-1, x.shape[1], -1, x.shape[3]))  # noqa: E731
    noise = torch.arange(width)[None, None, :, None] >= meta.num_tokens[:, None, None, None]
    qs, ks, vs = (torch.where(noise, 7.0, take(x)) for x in (q, k, v))
    method = backend.decode if meta.phase == "decode" else backend.prefill
    return method(layer, qs, ks, vs, meta)  # [B, Hq, T, D]


@pytest.mark.parametrize("first_len", [3, 12])  # a ring smaller than / as large as the window
def test_a_grown_cache_continues_exactly(pair, first_len: int) -> None:
    """Prefill into a small cache, copy it into a larger one, decode on: same logits as a
    single large cache (how an engine grows its cache without re-running the prompt)."""
    hf, ours = pair
    ids = _seqs([20], seed=4)[0]
    small = FullAttentionBackend.for_model(ours.config, 2, first_len)
    with torch.inference_mode():
        _forward(ours, small, ids[:first_len], AttentionMetadata.prefill([0], [first_len]))
        big = FullAttentionBackend.for_model(ours.config, 3, 24)
        big.copy_from(small)
        got = [
            _forward(ours, big, [ids[p]], AttentionMetadata.decode([p]))[0, -1]
            for p in range(first_len, 20)
        ]
    torch.testing.assert_close(torch.stack(got), hf_logits(hf, ids)[first_len:], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="cannot copy a cache of max_seq_len=24"):
        small.copy_from(big)


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
    good = {**base, "num_heads": 2}
    with pytest.raises(ValueError, match=r"layer_types=\['full_attention', 'x'\] must list 1"):
        ModelConfig(**good, layer_types=("full_attention", "x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sliding_attention' layers but sliding_window=None"):
        ModelConfig(**good, layer_types=("sliding_attention",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"attn_logit_softcapping=50\.0"):
        ModelConfig.from_hf_dict({"model_type": "gemma3_text", "attn_logit_softcapping": 50.0})
    with pytest.raises(ValueError, match=r"local layers must share one window, got \[3, 4\]"):
        FullAttentionBackend(2, 1, 4, 1, 8, sliding_window=[3, 4])
    with pytest.raises(ValueError, match=r"sliding_window=\[3\] must be None"):
        FullAttentionBackend(2, 1, 4, 1, 8, sliding_window=[3])


def test_gemma3_legacy_config_keys() -> None:
    """Configs on the Hub before transformers 5: rope_theta / rope_local_base_freq /
    rope_scaling (global layers) and sliding_window_pattern instead of layer_types."""
    c = ModelConfig.from_hf_dict(
        {
            "model_type": "gemma3_text",
            "vocab_size": 10,
            "hidden_size": 8,
            "intermediate_size": 8,
            "num_hidden_layers": 7,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 4,
            "rope_theta": 1e6,
            "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "sliding_window": 512,
            "sliding_window_pattern": 3,
            "query_pre_attn_scalar": 168,
        }
    )
    assert c.global_layers == (2, 5) and c.local_layers == (0, 1, 3, 4, 6)
    assert (c.rope_theta, c.rope_local_theta) == (1e6, 1e4)
    assert c.rope_scaling == RopeScaling("linear", 8.0, original_max_position_embeddings=131072)
    assert c.attention_scale == 168**-0.5 and c.eos_token_ids == (1,)
