"""Our own decoder (Llama family and Gemma 3) with a pluggable attention backend (docs/model.md)."""

from inference_worker.model.attention import AttentionBackend, AttentionMetadata
from inference_worker.model.config import ModelConfig, RopeScaling
from inference_worker.model.cuda_graph import GraphedDecoder
from inference_worker.model.full_attention import FullAttentionBackend
from inference_worker.model.greedy import greedy_generate, prefill_chunked
from inference_worker.model.llama import CausalLM
from inference_worker.model.loading import (
    LoadedModel,
    build_model,
    default_device,
    default_dtype,
    load_config,
    load_model,
)
from inference_worker.model.registry import (
    DEFAULT_MODEL,
    MODELS,
    default_model_path,
    gemma3_270m_path,
    resolve_model_path,
)
from inference_worker.model.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "AttentionBackend",
    "AttentionMetadata",
    "CausalLM",
    "FullAttentionBackend",
    "GraphedDecoder",
    "LoadedModel",
    "ModelConfig",
    "RopeScaling",
    "Tokenizer",
    "build_model",
    "default_device",
    "default_dtype",
    "default_model_path",
    "gemma3_270m_path",
    "greedy_generate",
    "load_config",
    "load_model",
    "prefill_chunked",
    "resolve_model_path",
]
