"""Rotary position embedding (HF "rotate_half" layout): linear and Llama-3 scaling, and a
separate plain base for local (sliding-window) layers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from inference_worker.model.config import ModelConfig, RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> Tensor:
    """Inverse frequencies [D/2] fp32, computed exactly as transformers' rope init functions."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # [D/2]
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    return _llama3_inv_freq(inv_freq, scaling)


def _llama3_inv_freq(inv_freq: Tensor, s: RopeScaling) -> Tensor:
    old_len = s.original_max_position_embeddings
    low_freq_wavelen = old_len / s.low_freq_factor
    high_freq_wavelen = old_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for per-token positions, one set per RoPE base the model uses.

    Global layers use `rope_theta` with the config's scaling (and llama.cpp `rope_freqs`
    factors); local layers use plain RoPE with `rope_local_theta` when the config has one
    (Gemma 3), otherwise the global tables.
    """

    inv_freq: Tensor  # [D/2] fp32, global layers
    local_inv_freq: Tensor  # [D/2] fp32, local layers

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        inv_freq, local = self._frequencies(None)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("local_inv_freq", local, persistent=False)

    def _frequencies(self, freq_factors: Tensor | None) -> tuple[Tensor, Tensor]:
        c = self.config
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)  # [D/2]
        if freq_factors is not None:
            inv_freq = inv_freq / freq_factors.to(torch.float32).cpu()
        if c.rope_local_theta is None:
            return inv_freq, inv_freq
        return inv_freq, rope_inv_freq(c.head_dim, c.rope_local_theta, None)

    def reset(self, device: torch.device, freq_factors: Tensor | None = None) -> None:
        """Recompute the frequencies on `device` (after meta-device construction).

        freq_factors: [D/2] llama.cpp `rope_freqs.weight` (global inv_freq is divided by it).
        """
        inv_freq, local = self._frequencies(freq_factors)
        self.inv_freq, self.local_inv_freq = inv_freq.to(device), local.to(device)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> RopeTables:
        """positions [B, T] int64 -> the tables of every RoPE base, each [B, 1, T, D]."""
        cos, sin = _tables(positions, self.inv_freq, dtype)
        if self.config.rope_local_theta is None:
            return RopeTables(cos, sin, cos, sin)
        local_cos, local_sin = _tables(positions, self.local_inv_freq, dtype)
        return RopeTables(cos, sin, local_cos, local_sin)


@dataclass(slots=True, frozen=True)
class RopeTables:
    """cos/sin [B, 1, T, D] of one forward call for global and for local layers."""

    cos: Tensor
    sin: Tensor
    local_cos: Tensor
    local_sin: Tensor

    def for_layer(self, local: bool) -> tuple[Tensor, Tensor]:
        return (self.local_cos, self.local_sin) if local else (self.cos, self.sin)


def _tables(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    freqs = positions[..., None].to(torch.float32) * inv_freq  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, D], cos/sin [B, 1, T, D] -> rotated x [B, H, T, D]."""
    return x * cos + _rotate_half(x) * sin
