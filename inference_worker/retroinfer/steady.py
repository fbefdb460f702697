"""Steady zone: sink tokens plus the recent window (and tokens generated since the last update)."""

from __future__ import annotations

import torch

from .kernels.step_io import write_token


class SteadyZone:
    """Dense exact-attention tokens of one layer for B sequences: [sinks | recent]."""

    def __init__(
        self,
        sink: int,
        capacity: int,
        batch: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.sink = sink  # tokens at the front that are never clustered
        shape = (batch, kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # [B, Hkv, cap, D]
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # [B, Hkv, cap, D]
        self.length = 0

    @property
    def recent(self) -> int:
        return self.length - self.sink

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append keys/values [B, Hkv, n, D]."""
        n = keys.shape[2]
        if self.length + n > self.keys.shape[2]:
            self._resize(self.length + n)
        self.keys[:, :, self.length : self.length + n] = keys
        self.values[:, :, self.length : self.length + n] = values
        self.length += n

    def append_at(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor) -> None:
        """Write one token (keys/values [B, Hkv, D]) at device position pos [1] (no host sync;
        the caller advances `length`). One kernel on the Triton path."""
        write_token(keys, values, self.keys, self.values, pos)

    def pop_oldest_recent(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Remove and return the oldest n recent tokens ([B, Hkv, n, D] each)."""
        s, end = self.sink, self.length
        keys = self.keys[:, :, s : s + n].clone()
        values = self.values[:, :, s : s + n].clone()
        self.keys[:, :, s : end - n] = self.keys[:, :, s + n : end].clone()
        self.values[:, :, s : end - n] = self.values[:, :, s + n : end].clone()
        self.length -= n
        return keys, values

    def _resize(self, needed: int) -> None:
        b, h, cap, d = self.keys.shape
        grown = torch.zeros(
            b, h, max(needed, 2 * cap), d, dtype=self.keys.dtype, device=self.keys.device
        )
        grown_v = torch.zeros_like(grown)
        grown[:, :, : self.length] = self.keys[:, :, : self.length]
        grown_v[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = grown, grown_v
