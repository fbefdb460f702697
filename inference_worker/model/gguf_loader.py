"""GGUF (llama.cpp) files: config from metadata, dequantized weights under HF parameter names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from inference_worker.model.config import ModelConfig, RopeScaling

_GGUF_ARCHS = ("llama", "qwen2")
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


def hf_name(gguf_name: str) -> str | None:
    """HF parameter name of a GGUF tensor, or None for tensors the model has no slot for."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    match = _LAYER_RE.match(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        return None
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"


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
    """(HF-named state dict in `dtype`, llama.cpp rope frequency factors [D/2] or None)."""
    permute = gguf_architecture(reader) == "llama"
    state: dict[str, torch.Tensor] = {}
    rope_freqs = None
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        if tensor.name == ROPE_FREQS:
            rope_freqs = torch.from_numpy(np.array(weights, dtype=np.float32)).reshape(-1)
            continue
        name = hf_name(tensor.name)
        if name is None:
            raise ValueError(f"GGUF tensor {tensor.name!r} has no place in the model")
        if permute and ".attn_q." in tensor.name:
            weights = reverse_permute(weights, config.num_heads)
        elif permute and ".attn_k." in tensor.name:
            weights = reverse_permute(weights, config.num_kv_heads)
        state[name] = torch.from_numpy(np.array(weights, dtype=np.float32)).to(dtype)
    return state, rope_freqs
