"""Next-token sampling for a batch of rows on the device, without host synchronisation.

Greedy rows take the argmax. Sampled rows draw from softmax(logits / temperature), restricted
to the nucleus (the smallest set of tokens whose probability reaches top_p), by the Gumbel-max
trick: argmax(log p + g) with g = -log(-log u) is a draw from p. The uniforms u come from a
counter-based hash of (seed, step, token id), so a request's draws depend only on its own seed
and step, whatever batch it runs in, and a whole batch is sampled in a few kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


@dataclass(slots=True)
class SamplingBatch:
    """Per-row sampling parameters of one step (device tensors)."""

    temperature: Tensor  # [B] fp32; 0 = greedy
    top_p: Tensor  # [B] fp32 in (0, 1]
    seed: Tensor  # [B] int64 (any 64-bit value)
    step: Tensor  # [B] int64: tokens this request has generated so far
    nucleus: bool  # any row with top_p < 1 (decided on the host: no sync)
    sampled: bool  # any row with temperature > 0

    @classmethod
    def of(
        cls,
        temperature: list[float],
        top_p: list[float],
        seed: list[int],
        step: list[int],
        device: torch.device,
    ) -> SamplingBatch:
        return cls(
            torch.tensor(temperature, dtype=torch.float32, device=device),
            torch.tensor(top_p, dtype=torch.float32, device=device),
            torch.tensor([s & ((1 << 63) - 1) for s in seed], dtype=torch.int64, device=device),
            torch.tensor(step, dtype=torch.int64, device=device),
            any(p < 1.0 for p, t in zip(top_p, temperature, strict=True) if t > 0),
            any(t > 0 for t in temperature),
        )


def sample(logits: Tensor, params: SamplingBatch) -> Tensor:
    """logits [B, V] -> next token ids [B] int64 (on the logits' device)."""
    greedy = logits.argmax(dim=-1)  # [B]
    if not params.sampled:
        return greedy
    temp = torch.where(params.temperature > 0, params.temperature, 1.0)  # [B]
    logp = torch.log_softmax(logits.float() / temp[:, None], dim=-1)  # [B, V]
    if params.nucleus:
        logp = torch.where(nucleus_mask(logp, params.top_p), logp, float("-inf"))
    noise = gumbel(params.seed, params.step, logits.shape[-1])  # [B, V]
    drawn = (logp + noise).argmax(dim=-1)  # [B]
    return torch.where(params.temperature > 0, drawn, greedy)


def nucleus_mask(logp: Tensor, top_p: Tensor) -> Tensor:
    """[B, V] bool: the tokens of each row's nucleus (at least its most likely token)."""
    sorted_logp, order = torch.sort(logp, dim=-1, descending=True)  # [B, V]
    probs = sorted_logp.exp()
    mass_before = probs.cumsum(dim=-1) - probs  # [B, V]
    keep_sorted = mass_before < top_p[:, None]
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)


def gumbel(seed: Tensor, step: Tensor, vocab: int) -> Tensor:
    """[B, V] fp32 standard Gumbel noise, a pure function of (seed[b], step[b], token id)."""
    row = _hash32(_hash32(seed & _MASK32) ^ _hash32((seed >> 32) ^ step))  # [B]
    col = _hash32(torch.arange(vocab, dtype=torch.int64, device=seed.device))  # [V]
    bits = _hash32(row[:, None] ^ col[None, :])  # [B, V] in [0, 2^32)
    u = ((bits >> 8).float() + 0.5) / float(1 << 24)  # (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixing function (lowbias32) on int64 tensors holding 32-bit values.
    Products may wrap past 2**63; their low 32 bits, which the mask keeps, are exact."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)
