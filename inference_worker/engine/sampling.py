"""Next-token selection: greedy, or temperature + nucleus (top-p) sampling, seeded."""

from __future__ import annotations

import torch


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A per-request generator so that sampling is reproducible for a given seed."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def sample_next(
    logits: torch.Tensor,  # [V] fp32 logits of the last position
    temperature: float,
    top_p: float,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token id. temperature == 0 means greedy (argmax)."""
    if temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [V]
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest token set whose mass reaches top_p (at least one), renormalised."""
    sorted_probs, order = torch.sort(probs, descending=True)  # [V], [V]
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # [V]
    sorted_probs = torch.where(mass_before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    kept = torch.zeros_like(probs).scatter_(0, order, sorted_probs)  # [V]
    return kept / kept.sum()
