"""Model hyper-parameters of one decoder family, read from a HF config.json or GGUF metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FAMILIES = ("llama", "mistral", "qwen2", "gemma3")
ROPE_TYPES = ("linear", "llama3")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
GLOBAL_LAYER = "full_attention"  # attends every cached token
LOCAL_LAYER = "sliding_attention"  # attends the last `sliding_window` tokens
LAYER_TYPES = (GLOBAL_LAYER, LOCAL_LAYER)
GEMMA3_LOCAL_THETA = 10000.0  # transformers' and llama.cpp's default local RoPE base
GEMMA3_WINDOW_PATTERN = 6  # every 6th Gemma 3 layer is global (transformers' default)


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
    """Shape and per-family switches of one decoder.

    family: "llama" (Llama 2/3, SmolLM2), "mistral", "qwen2" (Qwen2/2.5) or "gemma3"; the
    switches below carry the actual differences, the family name is informational.

    Attention layout: `layer_types[i]` is "full_attention" (a global layer: attends every
    cached token) or "sliding_attention" (a local layer: attends its last `sliding_window`
    tokens, as transformers masks it: key j is seen by query i when 0 <= i - j < window).
    Left empty, every layer is local when `sliding_window` is set (Mistral v0.1) and global
    otherwise. `global_layers` lists the layers a KV index must cover (RetroInfer indexes
    and stores only those; local layers keep their window on the device).
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
    rope_theta: float = 10000.0  # RoPE base of global layers (and of local ones without
    rope_scaling: RopeScaling | None = None  # rope_local_theta); scaling: global layers only
    rope_local_theta: float | None = None  # Gemma 3: plain RoPE base of the local layers
    max_position_embeddings: int = 4096
    qkv_bias: bool = False  # Qwen2: bias on q/k/v projections
    o_bias: bool = False  # Llama `attention_bias`: bias on o_proj too
    mlp_bias: bool = False  # Llama `mlp_bias`
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    sliding_window: int | None = None  # window of the local layers (tokens)
    layer_types: tuple[str, ...] = ()  # per layer GLOBAL_LAYER / LOCAL_LAYER (see above)
    hidden_act: str = "silu"  # gated MLP activation: SwiGLU ("silu") or GeGLU (Gemma)
    qk_norm: bool = False  # Gemma 3: RMSNorm over head_dim on q and k before RoPE
    sandwich_norms: bool = False  # Gemma: norms after attention and around the MLP too
    norm_unit_offset: bool = False  # Gemma RMSNorm: x * (1 + w) in fp32, w stored as offset
    scale_embeddings: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    query_pre_attn_scalar: float | None = None  # softmax scale 1/sqrt(this); None: head_dim
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)
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
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; use {ACTIVATIONS}")
        for name in ("query_pre_attn_scalar", "final_logit_softcapping", "rope_local_theta"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value} must be > 0 or None")
        object.__setattr__(self, "layer_types", self._checked_layer_types())

    def _checked_layer_types(self) -> tuple[str, ...]:
        if not self.layer_types:
            kind = GLOBAL_LAYER if self.sliding_window is None else LOCAL_LAYER
            return (kind,) * self.num_layers
        types = tuple(str(t) for t in self.layer_types)
        if len(types) != self.num_layers or any(t not in LAYER_TYPES for t in types):
            raise ValueError(
                f"layer_types={list(types)} must list {self.num_layers} values from {LAYER_TYPES}"
            )
        if LOCAL_LAYER in types and self.sliding_window is None:
            raise ValueError(f"layer_types has {LOCAL_LAYER!r} layers but sliding_window=None")
        return types

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group size G = Hq / Hkv)."""
        return self.num_heads // self.num_kv_heads

    @property
    def global_layers(self) -> tuple[int, ...]:
        """Layers that attend every cached token (the ones a KV index/store must cover)."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == GLOBAL_LAYER)

    @property
    def local_layers(self) -> tuple[int, ...]:
        """Layers that attend only their last `sliding_window` tokens."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == LOCAL_LAYER)

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        """Per layer: its attention window in tokens, None for a global layer."""
        return tuple(None if t == GLOBAL_LAYER else self.sliding_window for t in self.layer_types)

    @property
    def attention_scale(self) -> float:
        """Softmax scale of q.k: 1/sqrt(query_pre_attn_scalar or head_dim)."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Build from a parsed HF config.json (model_type llama, mistral, qwen2, gemma3_text)."""
        model_type = str(cfg.get("model_type"))
        if model_type == "gemma3_text":
            return _gemma3_from_hf(cfg)
        if model_type not in FAMILIES or model_type == "gemma3":
            raise ValueError(
                f"model_type={model_type!r} is not supported; use one of "
                f"{('llama', 'mistral', 'qwen2', 'gemma3_text')}"
            )
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act={act!r} is not supported; only 'silu' (SwiGLU)")
        max_pos = int(cfg.get("max_position_embeddings", 4096))
        rope_params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        attention_bias = bool(cfg.get("attention_bias", False)) and model_type == "llama"
        return cls(
            family=model_type,
            **_shape(cfg),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=RopeScaling.from_hf(rope_params, max_pos),
            max_position_embeddings=max_pos,
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type == "llama",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            sliding_window=_sliding_window(model_type, cfg),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_as_ids(cfg.get("eos_token_id")),
        )


def _shape(cfg: Mapping[str, Any]) -> dict[str, Any]:
    num_heads = int(cfg["num_attention_heads"])
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": int(cfg["hidden_size"]),
        "intermediate_size": int(cfg["intermediate_size"]),
        "num_layers": int(cfg["num_hidden_layers"]),
        "num_heads": num_heads,
        "num_kv_heads": int(cfg.get("num_key_value_heads") or num_heads),
        "head_dim": int(cfg.get("head_dim") or cfg["hidden_size"] // num_heads),
    }


def gemma3_layer_types(num_layers: int, pattern: int = GEMMA3_WINDOW_PATTERN) -> tuple[str, ...]:
    """Gemma 3's default layout: every `pattern`-th layer global, the others local."""
    return tuple(LOCAL_LAYER if (i + 1) % pattern else GLOBAL_LAYER for i in range(num_layers))


def gemma3_switches() -> dict[str, Any]:
    """The switches every Gemma 3 text model has (beside its shape and attention layout)."""
    return {
        "family": "gemma3",
        "hidden_act": "gelu_pytorch_tanh",
        "qk_norm": True,
        "sandwich_norms": True,
        "norm_unit_offset": True,
        "scale_embeddings": True,
    }


def _gemma3_from_hf(cfg: Mapping[str, Any]) -> ModelConfig:
    """Gemma3TextConfig: per-layer RoPE parameters (new) or rope_theta/rope_local_base_freq."""
    for unsupported in ("attn_logit_softcapping", "attention_bias", "use_bidirectional_attention"):
        if cfg.get(unsupported):
            raise ValueError(f"gemma3 {unsupported}={cfg[unsupported]!r} is not supported")
    act = cfg.get("hidden_activation", cfg.get("hidden_act", "gelu_pytorch_tanh"))
    if act != "gelu_pytorch_tanh":
        raise ValueError(f"gemma3 hidden_activation={act!r} is not supported")
    max_pos = int(cfg.get("max_position_embeddings", 131072))
    params = cfg.get("rope_parameters") or {}
    global_rope = params.get(GLOBAL_LAYER) or cfg.get("rope_scaling") or {}
    local_rope = params.get(LOCAL_LAYER) or {}
    if RopeScaling.from_hf(local_rope, max_pos) is not None:
        raise ValueError(f"gemma3 local-layer rope scaling {dict(local_rope)} is not supported")
    shape = _shape(cfg)
    layer_types = cfg.get("layer_types") or gemma3_layer_types(
        shape["num_layers"], int(cfg.get("sliding_window_pattern", GEMMA3_WINDOW_PATTERN))
    )
    softcap = cfg.get("final_logit_softcapping")
    return ModelConfig(
        **gemma3_switches(),
        **shape,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(global_rope.get("rope_theta", cfg.get("rope_theta", 1_000_000.0))),
        rope_scaling=RopeScaling.from_hf(global_rope, max_pos),
        rope_local_theta=float(
            local_rope.get("rope_theta", cfg.get("rope_local_base_freq", GEMMA3_LOCAL_THETA))
        ),
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        sliding_window=int(cfg.get("sliding_window", 4096)),
        layer_types=tuple(layer_types),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
        final_logit_softcapping=None if softcap is None else float(softcap),
        bos_token_id=cfg.get("bos_token_id", 2),
        eos_token_ids=_as_ids(cfg.get("eos_token_id", 1)),
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
