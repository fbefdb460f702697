"""The real default model (SmolLM2-135M-Instruct Q4_1 GGUF) vs transformers, and a passkey."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from inference_worker.model import (
    AttentionMetadata,
    LoadedModel,
    Tokenizer,
    default_model_path,
    greedy_generate,
    load_config,
    load_model,
)
from inference_worker.model.gguf_loader import hf_name, open_gguf, reverse_permute
from tests.model_fixtures import (
    hf_logits,
    passkey_prompt,
    prefill_logits,
    save_tiny,
    tiny_hf_model,
)

ATOL = 1e-3
PROMPT = "The capital of France is Paris. The capital of Germany is"


def test_default_model_path_and_config() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    c = load_config(path)
    assert (c.family, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        "llama",
        30,
        9,
        3,
        64,
    )
    assert c.tie_word_embeddings and c.rope_theta == 100000.0 and c.eos_token_ids == (2,)


@pytest.mark.parametrize("n_head", [3, 9])
def test_reverse_permute_matches_transformers(n_head: int) -> None:
    rng = np.random.default_rng(n_head)
    weights = rng.standard_normal((n_head * 64, 40)).astype(np.float32)
    ref = LlamaTensorProcessor()._reverse_permute_weights(weights, n_head, n_head)
    np.testing.assert_array_equal(reverse_permute(weights, n_head), ref)


def test_gguf_names_map_to_hf_names() -> None:
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.12.attn_q.bias") == "model.layers.12.self_attn.q_proj.bias"
    assert hf_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert hf_name("blk.3.unknown.weight") is None
    assert hf_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    gemma = {
        "blk.3.ffn_norm.weight": "model.layers.3.pre_feedforward_layernorm.weight",
        "blk.3.post_attention_norm.weight": "model.layers.3.post_attention_layernorm.weight",
        "blk.3.post_ffw_norm.weight": "model.layers.3.post_feedforward_layernorm.weight",
        "blk.3.attn_q_norm.weight": "model.layers.3.self_attn.q_norm.weight",
        "blk.3.attn_k_norm.weight": "model.layers.3.self_attn.k_norm.weight",
        "blk.3.attn_q.weight": "model.layers.3.self_attn.q_proj.weight",
    }
    assert {name: hf_name(name, "gemma3") for name in gemma} == gemma


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.mark.slow
def test_prefill_and_decode_logits_match_transformers(loaded, hf_model) -> None:
    ids = [*loaded.tokenizer.encode(PROMPT), 12, 345, 6789, 42, 1000, 7, 99, 2048]
    with torch.inference_mode():
        ref = hf_model(torch.tensor([ids])).logits[0]  # [T, V]
        backend = loaded.new_full_attention(1, 64)
        n = len(ids) - 8
        meta = AttentionMetadata.prefill([0], [n])
        got = [loaded.model(torch.tensor([ids[:n]]), meta, backend)[0]]  # [n, V]
        for pos in range(n, len(ids)):
            step = loaded.model(
                torch.tensor([[ids[pos]]]), AttentionMetadata.decode([pos]), backend
            )
            got.append(step[0])
    torch.testing.assert_close(torch.cat(got), ref, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_chat_template_comes_from_the_gguf_metadata(loaded) -> None:
    """What an OpenAI-compatible server renders chat messages with."""
    reader = open_gguf(loaded.path)
    template = reader.fields["tokenizer.chat_template"].contents()
    assert loaded.tokenizer.chat_template == template and "<|im_start|>" in template
    ids = loaded.tokenizer.chat_prompt([{"role": "user", "content": "Hi"}])
    text = loaded.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), text


@pytest.mark.slow
def test_greedy_continuation_is_sensible(loaded) -> None:
    backend = loaded.new_full_attention(1, 64)
    ids = loaded.tokenizer.encode(PROMPT)
    out = greedy_generate(loaded.model, backend, ids, 3, loaded.tokenizer.eos_token_ids)
    assert "Berlin" in loaded.tokenizer.decode(out)


@pytest.mark.slow
def test_full_attention_answers_2k_passkey(loaded) -> None:
    ids = loaded.tokenizer.encode(passkey_prompt("68142", 44))
    assert 1800 <= len(ids) <= 2300, len(ids)
    backend = loaded.new_full_attention(1, len(ids) + 8)
    out = greedy_generate(loaded.model, backend, ids, 6, chunk_size=512)
    assert "68142" in loaded.tokenizer.decode(out)


@pytest.mark.slow
def test_load_model_from_safetensors_folder_with_tokenizer(tmp_path) -> None:
    """load_model on a folder: config.json + weights + the tokenizer saved beside them."""
    path = default_model_path()
    hf = tiny_hf_model("llama", vocab_size=49152, hidden_size=32, intermediate_size=48)
    save_tiny(hf, tmp_path)
    Tokenizer.from_path(path).hf.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.dtype == torch.float32 and loaded.config.vocab_size == 49152
    ids = loaded.tokenizer.encode(PROMPT)
    assert loaded.tokenizer.decode(ids) == PROMPT
    torch.testing.assert_close(
        prefill_logits(loaded.model, ids), hf_logits(hf, ids), atol=ATOL, rtol=0
    )
