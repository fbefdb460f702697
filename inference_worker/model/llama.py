"""One compact Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2) with pluggable attention.

Parameter names equal transformers' LlamaForCausalLM names, so a HF state dict loads as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_worker.model.attention import AttentionBackend, AttentionMetadata
from inference_worker.model.config import ModelConfig
from inference_worker.model.rope import RotaryEmbedding, apply_rope


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back before the weight (as transformers does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))  # [H]
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    """Projections + RoPE; the attention itself is delegated to the backend."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> Tensor:
        """x [B, T, H] -> [B, T, H]."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = (
            apply_rope(q, cos, sin),
            apply_rope(k, cos, sin),
        )  # q: [B, Hq, T, D], k: [B, Hkv, T, D]
        if meta.phase == "decode":
            out = backend.decode(self.layer, q, k, v, meta)  # [B, Hq, 1, D]
        else:
            out = backend.prefill(self.layer, q, k, v, meta)  # [B, Hq, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, backend)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """Embedding, layers and final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


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

    def forward(
        self,
        tokens: Tensor,
        meta: AttentionMetadata,
        backend: AttentionBackend,
        last_only: bool = False,
    ) -> Tensor:
        """tokens [B, T] int64 (right-padded rows, see attention.py) ->
        logits [B, T, V], or [B, V] at each row's last real token when last_only."""
        x = self.model.embed_tokens(tokens)  # [B, T, H]
        cos, sin = self.rotary(meta.positions, x.dtype)  # [B, 1, T, D] each
        for layer in self.model.layers:
            x = layer(x, cos, sin, meta, backend)
        if last_only:
            last = (meta.num_tokens - 1)[:, None, None].expand(-1, 1, x.shape[-1])  # [B, 1, H]
            x = x.gather(1, last)[:, 0]  # [B, H]
        return self.lm_head(self.model.norm(x))
