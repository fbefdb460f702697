"""Decode-step query streams for the attention benchmarks.

`random`: a fresh standard-normal query every step (consecutive steps unrelated: the worst case
for the wave buffer's cache). `correlated`: q_t = rho * q_{t-1} + sqrt(1 - rho^2) * noise, a
stationary stream with the same marginal distribution whose consecutive queries overlap like a
real model's do; `calibrate_rho` picks rho so that the measured hit ratio is close to a target
(the real SmolLM2 model measured 0.78).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

STREAMS = ("random", "correlated")


class QueryStream:
    """Blocks of consecutive queries [n, B, Hq, D] (drawn in fp32, returned in `dtype`)."""

    def __init__(
        self,
        kind: str,
        shape: tuple[int, ...],
        device: torch.device,
        dtype: torch.dtype,
        rho: float = 0.0,
    ) -> None:
        if kind not in STREAMS:
            raise ValueError(f"query stream must be one of {STREAMS}, got {kind!r}")
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {rho!r}")
        self.kind, self.shape, self.device, self.dtype, self.rho = kind, shape, device, dtype, rho
        self._last = torch.randn(shape, device=device)

    def take(self, n: int) -> torch.Tensor:
        noise = torch.randn(n, *self.shape, device=self.device)  # [n, B, Hq, D]
        if self.kind == "random":
            return noise.to(self.dtype)
        keep, fresh = self.rho, math.sqrt(1.0 - self.rho**2)
        out = torch.empty_like(noise)
        for i in range(n):
            self._last = keep * self._last + fresh * noise[i]
            out[i] = self._last
        return out.to(self.dtype)


def calibrate_rho(
    stream: QueryStream,
    hit_ratio_of: Callable[[torch.Tensor], float],  # runs these queries, returns their hit ratio
    target: float,
    rounds: int = 7,
    steps: int = 24,
) -> tuple[float, float]:
    """Bisection on rho in [0, 1) for the hit ratio `target` (hit ratio grows with rho).
    Returns (rho, measured hit ratio of the closest round)."""
    lo, hi = 0.0, 0.999
    best = (0.0, -1.0)
    for _ in range(rounds):
        stream.rho = (lo + hi) / 2
        ratio = hit_ratio_of(stream.take(steps))
        if abs(ratio - target) < abs(best[1] - target):
            best = (stream.rho, ratio)
        lo, hi = (stream.rho, hi) if ratio < target else (lo, stream.rho)
    stream.rho = best[0]
    return best
