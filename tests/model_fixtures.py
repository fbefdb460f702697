"""Helpers for the model tests: tiny random HF models saved as safetensors folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from inference_worker.model import (
    AttentionMetadata,
    CausalLM,
    FullAttentionBackend,
    build_model,
    load_config,
)
from inference_worker.model.safetensors_loader import load_safetensors_state_dict

TINY = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
# Gemma 3 with every switch exercised: local and global layers (window 5), distinct RoPE
# bases with linear scaling on the global layers, a query scalar unequal to head_dim, and
# final logit soft-capping (the real 270M has none; 5.0 keeps tanh far from linear here).
TINY_GEMMA3 = {
    "num_hidden_layers": 5,
    "head_dim": 16,
    "layer_types": [
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ],
    "sliding_window": 5,
    "query_pre_attn_scalar": 24,
    "final_logit_softcapping": 5.0,
    "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
    },
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 1,
}
CONFIG_CLASSES = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "gemma3": Gemma3TextConfig,
}


def tiny_hf_model(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A random fp32 HF model of `family`; every parameter (biases, norms) is randomised."""
    kwargs = {**TINY, **(TINY_GEMMA3 if family == "gemma3" else {}), **overrides}
    config = CONFIG_CLASSES[family](**kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and family == "gemma3":
                param.uniform_(-0.5, 0.5)  # Gemma norms scale by (1 + w)
            elif "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.08)
    return model


def save_tiny(model: Any, folder: Path, max_shard_size: str | None = None) -> Path:
    """save_pretrained as safetensors (sharded with an index when max_shard_size is set)."""
    if max_shard_size is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    return folder


def load_ours(folder: Path) -> CausalLM:
    """Our model from a safetensors folder, fp32 on CPU (no tokenizer needed)."""
    config = load_config(folder)
    return build_model(
        config, load_safetensors_state_dict(folder, torch.float32), torch.device("cpu")
    )


def prefill_logits(model: CausalLM, ids: list[int], max_seq_len: int = 256) -> torch.Tensor:
    """Logits [T, V] of one sequence in one prefill call on a fresh cache."""
    backend = FullAttentionBackend.for_model(model.config, 1, max_seq_len)
    meta = AttentionMetadata.prefill([0], [len(ids)])
    with torch.inference_mode():
        return model(torch.tensor([ids]), meta, backend)[0]


def hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    """Transformers' logits [T, V] for one sequence (no padding)."""
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def passkey_prompt(passkey: str, n_filler: int) -> str:
    """Completion-style passkey prompt with the key in the middle of `2 * n_filler` fillers."""
    intro = (
        "There is an important info hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about the important information there.\n"
    )
    filler = (
        "The grass is green. The sky is blue. The sun is yellow. "
        "Here we go. There and back again.\n"
    )
    needle = f"The pass key is {passkey}. Remember it. {passkey} is the pass key.\n"
    question = "What is the pass key? The pass key is"
    return intro + filler * n_filler + needle + filler * n_filler + question
