"""Models with RANDOM bf16 weights of a real architecture (no weights ship for them offline):
throughput benchmarks only, the generated text is meaningless."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from inference_worker.engine import EngineConfig, GenerationEngine
from inference_worker.model import CausalLM, ModelConfig, build_model
from inference_worker.model.config import gemma3_layer_types, gemma3_switches
from inference_worker.model.loading import LoadedModel

RANDOM_MODELS = {
    "random-smollm2": ModelConfig(
        family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
        num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True,
    ),
    "random-tiny": ModelConfig(  # CPU smoke runs of the benchmarks
        family="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
        max_position_embeddings=8192, tie_word_embeddings=True,
    ),
    "random-gemma3-270m": ModelConfig(  # hybrid: 15 sliding-window layers, 3 global
        **gemma3_switches(), vocab_size=262144, hidden_size=640, intermediate_size=2048,
        num_layers=18, num_heads=4, num_kv_heads=1, head_dim=256, rope_theta=1_000_000.0,
        rope_local_theta=10000.0, max_position_embeddings=32768, tie_word_embeddings=True,
        sliding_window=512, layer_types=gemma3_layer_types(18), query_pre_attn_scalar=256.0,
    ),
    "random-llama8b": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
        max_position_embeddings=1 << 20,  # past Llama 3.1's 128K: random weights, 512K rows
    ),
}  # fmt: skip


class _NoTextTokenizer:
    """Random-weight models have no vocabulary: token ids in, no text out, no EOS."""

    eos_token_ids: tuple[int, ...] = ()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise ValueError("a random-weight model has no vocabulary: pass token ids")


def random_engine(
    name: str, device: torch.device, engine: EngineConfig | None = None
) -> GenerationEngine:
    """RANDOM_MODELS[name] with random weights (norms 1, the rest N(0, 0.02)): bf16 on CUDA,
    fp32 on CPU."""
    config = RANDOM_MODELS[name]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        shell = CausalLM(config)
    gen = torch.Generator(device=device).manual_seed(0)
    state = {}
    for key, p in shell.state_dict().items():
        w = torch.empty(p.shape, dtype=dtype, device=device)
        state[key] = w.fill_(1.0) if "norm" in key else w.normal_(0.0, 0.02, generator=gen)
    model = build_model(config, state, device)
    tokenizer: Any = _NoTextTokenizer()
    loaded = LoadedModel(model, tokenizer, config, Path(name), device, dtype)
    return GenerationEngine(loaded, engine)
