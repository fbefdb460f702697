"""GGUF (llama.cpp) files: config from metadata, dequantized weights under HF parameter names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from inference_worker.model.config import (
    GEMMA3_LOCAL_THETA,
    GEMMA3_WINDOW_PATTERN,
    ModelConfig,
    RopeScaling,
    gemma3_layer_types,
    gemma3_switches,
)

_GGUF_ARCHS = ("llama", "qwen2", "gemma3")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 3 (llama.cpp names): ffn_norm is the MLP's input norm, which HF's Gemma3 calls
# pre_feedforward_layernorm (its post_attention_layernorm normalises the attention output).
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
ROPE_FREQS = "rope_freqs.weight"


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_architecture(reader: GGUFReader) -> str:
    arch = str(_field(reader, "general.architecture"))
    if arch not in _GGUF_ARCHS:
        raise ValueError(f"GGUF general.architecture={arch!r} is not supported; use {_GGUF_ARCHS}")
    return arch


def config_from_gguf(reader: GGUFReader) -> ModelConfig:
    """ModelConfig from GGUF metadata (keys `<arch>.*`, `tokenizer.ggml.*`)."""
    arch = gguf_architecture(reader)
    if arch == "gemma3":
        return _gemma3_config(reader)
    names = {t.name for t in reader.tensors}
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    name = str(_field(reader, "general.name", "")).lower()
    family = "mistral" if arch == "llama" and "mistral" in name else arch
    vocab = _field(reader, f"{arch}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    max_pos = int(_field(reader, f"{arch}.context_length", 4096))
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        family=family,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_layers=int(_field(reader, f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=_gguf_rope_scaling(reader, arch, max_pos),
        max_position_embeddings=max_pos,
        qkv_bias="blk.0.attn_q.bias" in names,
        o_bias="blk.0.attn_output.bias" in names,
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )


def _gemma3_config(reader: GGUFReader) -> ModelConfig:
    """Gemma 3: llama.cpp writes the window but not the layout, the local RoPE base or the
    query scalar; it uses the same defaults as transformers for them (every 6th layer global,
    local base 10000, 1/sqrt(head_dim) except for the 27B's 1/sqrt(hidden / heads))."""
    a = "gemma3"
    attn_softcap = _field(reader, f"{a}.attn_logit_softcapping")
    if attn_softcap is not None:
        raise ValueError(f"GGUF {a}.attn_logit_softcapping={attn_softcap} is not supported")
    hidden = int(_field(reader, f"{a}.embedding_length"))
    heads = int(_field(reader, f"{a}.attention.head_count"))
    layers = int(_field(reader, f"{a}.block_count"))
    head_dim = int(_field(reader, f"{a}.attention.key_length", hidden // heads))
    max_pos = int(_field(reader, f"{a}.context_length", 131072))
    pattern = int(_field(reader, f"{a}.attention.sliding_window_pattern", GEMMA3_WINDOW_PATTERN))
    softcap = _field(reader, f"{a}.final_logit_softcapping")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    vocab = _field(reader, f"{a}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    return ModelConfig(
        **gemma3_switches(),
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{a}.feed_forward_length")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{a}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(_field(reader, f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(_field(reader, f"{a}.rope.freq_base", 1_000_000.0)),
        rope_scaling=_gguf_rope_scaling(reader, a, max_pos),
        rope_local_theta=GEMMA3_LOCAL_THETA,
        max_position_embeddings=max_pos,
        tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors},
        sliding_window=int(_field(reader, f"{a}.attention.sliding_window")),
        layer_types=gemma3_layer_types(layers, pattern),
        query_pre_attn_scalar=float(hidden // heads if layers == _GEMMA3_27B_LAYERS else head_dim),
        final_logit_softcapping=None if softcap is None else float(softcap),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )


_GEMMA3_27B_LAYERS = 62  # llama.cpp's test for the one Gemma 3 with query_pre_attn_scalar 168


def _gguf_rope_scaling(reader: GGUFReader, arch: str, max_pos: int) -> RopeScaling | None:
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    original = _field(reader, f"{arch}.rope.scaling.original_context_length", max_pos)
    return RopeScaling(
        rope_type=str(kind),
        factor=float(_field(reader, f"{arch}.rope.scaling.factor", 1.0)),
        original_max_position_embeddings=int(original),
    )


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """HF parameter name of a GGUF tensor, or None for tensors the model has no slot for."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    names = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
    match = _LAYER_RE.match(gguf_name)
    if match is None or match.group(2) not in names:
        return None
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{names[part]}.{kind}"


def reverse_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved -> rotate_half RoPE layout).

    Same as transformers' LlamaTensorProcessor._reverse_permute_weights; n_head is the
    number of heads the rows belong to (Hq for attn_q, Hkv for attn_k).
    """
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def open_gguf(path: str | Path) -> GGUFReader:
    """Parse a GGUF file once (metadata + memory-mapped tensors); pass the reader around."""
    return GGUFReader(str(path))


def load_gguf_state_dict(
    reader: GGUFReader, config: ModelConfig, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(HF-named state dict in `dtype`, llama.cpp rope frequency factors [D/2] or None).

    Llama Q/K rows are un-permuted; Gemma norm weights are stored by llama.cpp as 1 + w and
    come back as the offset w (as transformers' Gemma2TensorProcessor does)."""
    arch = gguf_architecture(reader)
    permute = arch == "llama"
    state: dict[str, torch.Tensor] = {}
    rope_freqs = None
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        if tensor.name == ROPE_FREQS:
            rope_freqs = torch.from_numpy(np.array(weights, dtype=np.float32)).reshape(-1)
            continue
        name = hf_name(tensor.name, arch)
        if name is None:
            raise ValueError(f"GGUF tensor {tensor.name!r} has no place in the model")
        if permute and ".attn_q." in tensor.name:
            weights = reverse_permute(weights, config.num_heads)
        elif permute and ".attn_k." in tensor.name:
            weights = reverse_permute(weights, config.num_kv_heads)
        elif arch == "gemma3" and "norm.weight" in tensor.name:
            weights = weights - 1
        state[name] = torch.from_numpy(np.array(weights, dtype=np.float32)).to(dtype)
    return state, rope_freqs
