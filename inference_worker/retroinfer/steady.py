"""Steady zone: sink tokens plus the recent window (and tokens generated since the last update),
one row per batch slot with its own length."""

from __future__ import annotations

import torch

from .kernels.step_io import write_token


class SteadyZone:
    """Dense exact-attention tokens of one layer for B slots: per slot [sinks | recent], each
    slot with its own length (a free slot has length 0)."""

    def __init__(
        self,
        capacity: int,
        batch: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch, kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # [B, Hkv, cap, D]
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # [B, Hkv, cap, D]
        self.sinks = [0] * batch  # tokens at the front of each slot that are never clustered
        self.lengths = [0] * batch

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def recent(self, slot: int) -> int:
        return self.lengths[slot] - self.sinks[slot]

    def fill(self, slot: int, sink: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Slot `slot` holds exactly keys/values [Hkv, n, D], the first `sink` of them sinks."""
        n = keys.shape[1]
        if n > self.capacity:
            self.resize(n)
        self.keys[slot, :, :n] = keys
        self.values[slot, :, :n] = values
        self.sinks[slot], self.lengths[slot] = sink, n

    def clear(self, slot: int) -> None:
        self.sinks[slot] = self.lengths[slot] = 0

    def write_at(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor) -> None:
        """Write one token per row (keys/values [B, Hkv, D]) at device positions pos [R]."""
        write_token(keys, values, self.keys, self.values, pos)

    def pop_oldest_recent(self, slot: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Remove and return slot's oldest n recent tokens ([Hkv, n, D] each)."""
        s, end = self.sinks[slot], self.lengths[slot]
        keys = self.keys[slot, :, s : s + n].clone()
        values = self.values[slot, :, s : s + n].clone()
        self.keys[slot, :, s : end - n] = self.keys[slot, :, s + n : end].clone()
        self.values[slot, :, s : end - n] = self.values[slot, :, s + n : end].clone()
        self.lengths[slot] -= n
        return keys, values

    def grow(self, batch: int) -> None:
        """`batch` slots (the new ones empty)."""
        extra = batch - self.keys.shape[0]
        pad = torch.zeros(extra, *self.keys.shape[1:], dtype=self.keys.dtype,
                          device=self.keys.device)  # fmt: skip
        self.keys = torch.cat([self.keys, pad])
        self.values = torch.cat([self.values, pad.clone()])
        self.sinks.extend([0] * extra)
        self.lengths.extend([0] * extra)

    def resize(self, needed: int) -> None:
        """Capacity of at least `needed` tokens per slot (contents kept)."""
        b, h, cap, d = self.keys.shape
        grown = torch.zeros(b, h, max(needed, 2 * cap), d, dtype=self.keys.dtype,
                            device=self.keys.device)  # fmt: skip
        grown_v = torch.zeros_like(grown)
        grown[:, :, :cap] = self.keys
        grown_v[:, :, :cap] = self.values
        self.keys, self.values = grown, grown_v
