"""Rotary position embedding (HF "rotate_half" layout) with linear and Llama-3 scaling."""

from __future__ import annotations

import math

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
    """Computes cos/sin for per-token positions; llama.cpp `rope_freqs` factors supported."""

    inv_freq: Tensor  # [D/2] fp32

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset(self, device: torch.device, freq_factors: Tensor | None = None) -> None:
        """Recompute inv_freq on `device` (after meta-device construction).

        freq_factors: [D/2] llama.cpp `rope_freqs.weight` (inv_freq is divided by it).
        """
        c = self.config
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)
        if freq_factors is not None:
            inv_freq = inv_freq / freq_factors.to(torch.float32).cpu()
        self.inv_freq = inv_freq.to(device)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions [B, T] int64 -> (cos, sin), each [B, 1, T, D] in `dtype`."""
        freqs = positions[..., None].to(torch.float32) * self.inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, D], cos/sin [B, 1, T, D] -> rotated x [B, H, T, D]."""
    return x * cos + _rotate_half(x) * sin
