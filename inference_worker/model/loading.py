"""Entry points: build CausalLM + Tokenizer from a model name, a GGUF file or a folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from inference_worker.model.config import ModelConfig
from inference_worker.model.full_attention import FullAttentionBackend
from inference_worker.model.gguf_loader import config_from_gguf, load_gguf_state_dict, open_gguf
from inference_worker.model.llama import CausalLM
from inference_worker.model.registry import default_model_path as default_model_path
from inference_worker.model.registry import resolve_model_path
from inference_worker.model.safetensors_loader import (
    config_from_folder,
    load_safetensors_state_dict,
)
from inference_worker.model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """Compute dtype: bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(slots=True)
class LoadedModel:
    """A ready model: weights on `device` in `dtype` (the compute dtype), and its tokenizer."""

    model: CausalLM
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    device: torch.device
    dtype: torch.dtype

    def new_full_attention(
        self, max_batch_size: int, max_seq_len: int, fixed_kv_len: bool = False
    ) -> FullAttentionBackend:
        """A dense KV cache backend matching this model's shape, dtype and device."""
        return FullAttentionBackend.for_model(
            self.config, max_batch_size, max_seq_len, self.dtype, self.device, fixed_kv_len
        )


def load_config(path: str | Path) -> ModelConfig:
    """ModelConfig of a model name, a `.gguf` file or a safetensors folder with config.json."""
    path = resolve_model_path(path)
    if path.suffix == ".gguf":
        return config_from_gguf(open_gguf(path))
    return config_from_folder(path)


def load_model(
    path: str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load weights + tokenizer. path: a model name (`smollm2-135m`, `gemma3-270m`), a GGUF
    file or a safetensors folder; None -> the default model. device None -> cuda or cpu;
    dtype None -> bf16 on CUDA, fp32 on CPU."""
    path = resolve_model_path(path)
    dev = default_device() if device is None else torch.device(device)
    dt = default_dtype(dev) if dtype is None else dtype
    rope_freqs = None
    if path.suffix == ".gguf":
        reader = open_gguf(path)
        config = config_from_gguf(reader)
        state, rope_freqs = load_gguf_state_dict(reader, config, dt)
    else:
        config = config_from_folder(path)
        state = load_safetensors_state_dict(path, dt)
    model = build_model(config, state, dev, rope_freqs)
    tokenizer = Tokenizer.from_path(path, extra_eos_ids=config.eos_token_ids)
    logger.info(
        "loaded %s (%s, %d layers) on %s as %s",
        path.name,
        config.family,
        config.num_layers,
        dev,
        dt,
    )
    return LoadedModel(model, tokenizer, config, path, dev, dt)


def build_model(
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    device: torch.device,
    rope_freqs: torch.Tensor | None = None,
) -> CausalLM:
    """CausalLM with exactly the given HF-named weights (no random init), in eval mode."""
    with torch.device("meta"):
        model = CausalLM(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the config: missing={missing[:5]} unexpected={unexpected[:5]}"
        )
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False, assign=True)
    model.tie_weights()
    model.rotary.reset(device, rope_freqs)
    return model.eval().requires_grad_(False)
