"""One compact decoder (Llama 2/3, SmolLM2, Mistral, Qwen2, Gemma 3) with pluggable attention.

Parameter names equal transformers' names (LlamaForCausalLM, Gemma3ForCausalLM), so a HF
state dict loads as is. The families differ only by the ModelConfig switches used here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_worker.model.attention import AttentionBackend, AttentionMetadata
from inference_worker.model.config import LOCAL_LAYER, ModelConfig
from inference_worker.model.rope import RopeTables, RotaryEmbedding, apply_rope


class RMSNorm(nn.Module):
    """RMSNorm in fp32. Llama: cast back, then times w. Gemma (unit_offset): times (1 + w) in
    fp32, then cast back (each as transformers does)."""

    def __init__(self, dim: int, eps: float, unit_offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))  # [H]
        self.eps = eps
        self.unit_offset = unit_offset

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x32 * (1.0 + self.weight.to(torch.float32))).to(x.dtype)
        return self.weight * x32.to(x.dtype)


def _norm(config: ModelConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, config.rms_norm_eps, config.norm_unit_offset)


class Attention(nn.Module):
    """Projections (+ QK-norm) + RoPE; the attention itself is delegated to the backend."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config
        self.layer = layer
        self.local = c.layer_types[layer] == LOCAL_LAYER
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        self.q_norm = _norm(c, c.head_dim) if c.qk_norm else None
        self.k_norm = _norm(c, c.head_dim) if c.qk_norm else None

    def forward(
        self, x: Tensor, rope: RopeTables, meta: AttentionMetadata, backend: AttentionBackend
    ) -> Tensor:
        """x [B, T, H] -> [B, T, H]."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope.for_layer(self.local)  # [B, 1, T, D] each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # [B, Hq|Hkv, T, D]
        if meta.phase == "decode":
            out = backend.decode(self.layer, q, k, v, meta)  # [B, Hq, 1, D]
        else:
            out = backend.prefill(self.layer, q, k, v, meta)  # [B, Hq, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); act = silu (SwiGLU) or tanh-GELU (GeGLU)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.gelu = c.hidden_act == "gelu_pytorch_tanh"

    def forward(self, x: Tensor) -> Tensor:
        gate = self.gate_proj(x)
        act = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return self.down_proj(act * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block. Llama: `post_attention_layernorm` is the MLP's input norm. Gemma
    (sandwich_norms): it normalises the attention output, and the MLP has its own
    `pre_feedforward_layernorm` / `post_feedforward_layernorm`."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.input_layernorm = _norm(config, h)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = _norm(config, h)
        self.mlp = MLP(config)
        self.sandwich = config.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = _norm(config, h)
            self.post_feedforward_layernorm = _norm(config, h)

    def forward(
        self, x: Tensor, rope: RopeTables, meta: AttentionMetadata, backend: AttentionBackend
    ) -> Tensor:
        attn = self.self_attn(self.input_layernorm(x), rope, meta, backend)
        if not self.sandwich:
            x = x + attn
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class DecoderStack(nn.Module):
    """Embedding, layers and final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = _norm(config, config.hidden_size)


class CausalLM(nn.Module):
    """The language model. Weights and compute share one dtype (fp32 on CPU, bf16 on CUDA)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(config)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share lm_head with the embedding when the config says so."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens [B, T] -> [B, T, H]; Gemma scales by sqrt(H) rounded to the weight dtype."""
        x = self.model.embed_tokens(tokens)  # [B, T, H]
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)
        return x

    def forward(
        self,
        tokens: Tensor,
        meta: AttentionMetadata,
        backend: AttentionBackend,
        last_only: bool = False,
    ) -> Tensor:
        """tokens [B, T] int64 (right-padded rows, see attention.py) ->
        logits [B, T, V], or [B, V] at each row's last real token when last_only."""
        x = self.embed(tokens)  # [B, T, H]
        rope = self.rotary(meta.positions, x.dtype)  # tables [B, 1, T, D]
        for layer in self.model.layers:
            x = layer(x, rope, meta, backend)
        if last_only:
            last = (meta.num_tokens - 1)[:, None, None].expand(-1, 1, x.shape[-1])  # [B, 1, H]
            x = x.gather(1, last)[:, 0]  # [B, H]
        logits = self.lm_head(self.model.norm(x))  # [B, T, V] or [B, V]
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
