"""Model hyper-parameters for the Llama family, read from a HF config.json or GGUF metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FAMILIES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("linear", "llama3")


@dataclass(slots=True, frozen=True)
class RopeScaling:
    """Non-default RoPE frequency scaling (HF `rope_scaling` / `rope_parameters`).

    rope_type: "linear" (all frequencies divided by `factor`) or "llama3" (Llama 3.1 smooth
    interpolation between `low_freq_factor` and `high_freq_factor` wavelengths).
    """

    rope_type: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"rope_type={self.rope_type!r} is not supported; use one of {ROPE_TYPES}"
            )
        if self.factor <= 0:
            raise ValueError(f"rope factor={self.factor} must be > 0")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"llama3 rope needs high_freq_factor={self.high_freq_factor} > "
                f"low_freq_factor={self.low_freq_factor}"
            )

    @classmethod
    def from_hf(cls, params: Mapping[str, Any] | None, max_positions: int) -> RopeScaling | None:
        """Parse HF `rope_scaling` (old) or `rope_parameters` (new); None for plain RoPE."""
        if not params:
            return None
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type == "default":
            return None
        return cls(
            rope_type=str(rope_type),
            factor=float(params.get("factor", 1.0)),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings", max_positions)
            ),
        )


@dataclass(slots=True, frozen=True)
class ModelConfig:
    """Shape and per-family switches of one Llama-family decoder.

    family: "llama" (Llama 2/3, SmolLM2), "mistral" or "qwen2" (Qwen2/2.5); the switches
    below carry the actual differences, the family name is informational.
    """

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    qkv_bias: bool = False  # Qwen2: bias on q/k/v projections
    o_bias: bool = False  # Llama `attention_bias`: bias on o_proj too
    mlp_bias: bool = False  # Llama `mlp_bias`
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    sliding_window: int | None = None  # Mistral v0.1: keys older than this are masked
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} is not supported; use one of {FAMILIES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.num_heads <= 0 or self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a positive multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be > 0 or None")

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group size G = Hq / Hkv)."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Build from a parsed HF config.json (model_type llama, mistral or qwen2)."""
        family = str(cfg.get("model_type"))
        if family not in FAMILIES:
            raise ValueError(f"model_type={family!r} is not supported; use one of {FAMILIES}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act={act!r} is not supported; only 'silu' (SwiGLU)")
        num_heads = int(cfg["num_attention_heads"])
        max_pos = int(cfg.get("max_position_embeddings", 4096))
        rope_params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        attention_bias = bool(cfg.get("attention_bias", False)) and family == "llama"
        return cls(
            family=family,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // num_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=RopeScaling.from_hf(rope_params, max_pos),
            max_position_embeddings=max_pos,
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) and family == "llama",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=_sliding_window(family, cfg),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_as_ids(cfg.get("eos_token_id")),
        )


def _sliding_window(family: str, cfg: Mapping[str, Any]) -> int | None:
    if family == "qwen2":
        if cfg.get("use_sliding_window", False):
            raise ValueError("qwen2 use_sliding_window=True is not supported (per-layer windows)")
        return None
    if family == "mistral" and cfg.get("sliding_window") is not None:
        return int(cfg["sliding_window"])
    return None


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)
