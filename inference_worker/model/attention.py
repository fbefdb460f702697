"""The attention boundary: batch metadata and the backend protocol the model calls per layer.

Batching convention (both phases): a call carries B sequences as rows of a [B, T] token block.
Row b holds `num_tokens[b]` real tokens, left-aligned; the rest of the row is right padding.
Row b's real tokens sit at absolute positions start_pos[b] .. start_pos[b] + num_tokens[b] - 1
of its own sequence (these are the RoPE positions). No left padding is ever used, so every
sequence keeps exact positions and the backend needs no attention mask from the caller.
Outputs for padding positions are unspecified and must be ignored by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

Phase = Literal["prefill", "decode"]


@dataclass(slots=True)
class AttentionMetadata:
    """Where the tokens of one forward call go; shared by all layers of that call.

    Build it with `prefill(...)` or `decode(...)` rather than by hand.
    """

    phase: Phase
    start_pos: Tensor  # [B] int64: tokens already cached for each row's sequence
    num_tokens: Tensor  # [B] int64: real (non-padding) tokens of this call per row, 1..T
    positions: Tensor  # [B, T] int64: start_pos[:, None] + arange(T) (RoPE positions)
    slots: Tensor | None  # [B] int64 cache rows of the sequences, or None for rows 0..B-1
    chunk_len: int  # T
    kv_len: int  # max_b(start_pos[b] + num_tokens[b]): cached length after this call
    start_list: list[int] = field(default_factory=list)  # start_pos as Python ints
    count_list: list[int] = field(default_factory=list)  # num_tokens as Python ints
    slot_list: list[int] | None = None  # slots as Python ints

    @property
    def batch_size(self) -> int:
        return len(self.start_list)

    @classmethod
    def prefill(
        cls,
        start_pos: Sequence[int],
        num_tokens: Sequence[int],
        device: torch.device | str = "cpu",
        slots: Sequence[int] | None = None,
        chunk_len: int | None = None,
    ) -> AttentionMetadata:
        """A (possibly chunked) prefill call; T = chunk_len or max(num_tokens)."""
        t = chunk_len if chunk_len is not None else max(num_tokens, default=0)
        return cls._build("prefill", start_pos, num_tokens, t, device, slots)

    @classmethod
    def decode(
        cls,
        start_pos: Sequence[int],
        device: torch.device | str = "cpu",
        slots: Sequence[int] | None = None,
    ) -> AttentionMetadata:
        """One decode step: T = 1, one new token per row."""
        return cls._build("decode", start_pos, [1] * len(start_pos), 1, device, slots)

    @classmethod
    def _build(
        cls,
        phase: Phase,
        start_pos: Sequence[int],
        num_tokens: Sequence[int],
        chunk_len: int,
        device: torch.device | str,
        slots: Sequence[int] | None,
    ) -> AttentionMetadata:
        starts, counts = [int(s) for s in start_pos], [int(n) for n in num_tokens]
        _validate(starts, counts, chunk_len, slots)
        start_t = torch.tensor(starts, dtype=torch.int64, device=device)  # [B]
        positions = start_t[:, None] + torch.arange(chunk_len, device=device)  # [B, T]
        return cls(
            phase=phase,
            start_pos=start_t,
            num_tokens=torch.tensor(counts, dtype=torch.int64, device=device),
            positions=positions,
            slots=None if slots is None else torch.tensor(list(slots), device=device),
            chunk_len=chunk_len,
            kv_len=max(s + n for s, n in zip(starts, counts, strict=True)),
            start_list=starts,
            count_list=counts,
            slot_list=None if slots is None else [int(s) for s in slots],
        )


def _validate(
    starts: list[int], counts: list[int], chunk_len: int, slots: Sequence[int] | None
) -> None:
    if not starts or len(starts) != len(counts):
        raise ValueError(
            f"start_pos (len {len(starts)}) and num_tokens (len {len(counts)}) "
            "must be non-empty and of equal length"
        )
    if min(starts) < 0:
        raise ValueError(f"start_pos={starts} must be >= 0")
    if min(counts) < 1 or max(counts) > chunk_len:
        raise ValueError(f"num_tokens={counts} must lie in [1, chunk_len={chunk_len}]")
    if slots is not None and (len(slots) != len(starts) or len(set(slots)) != len(slots)):
        raise ValueError(f"slots={list(slots)} must be {len(starts)} distinct cache rows")


@runtime_checkable
class AttentionBackend(Protocol):
    """Per-layer attention with its own KV state; the model calls exactly one method per layer.

    Inputs are post-RoPE, in the model's compute dtype:
      q: [B, Hq, T, D], k: [B, Hkv, T, D], v: [B, Hkv, T, D]
    GQA: query head h uses KV head h // (Hq // Hkv). Softmax scale is 1/sqrt(D), causal.
    The backend stores the real tokens of k/v (see the module docstring for padding) at
    positions start_pos[b] .. start_pos[b] + num_tokens[b] - 1 and returns
      out: [B, Hq, T, D] attention output over every cached token at or before each query.
    """

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """Prefill or one prefill chunk (T >= 1 new tokens per row, causal inside the chunk)."""
        ...

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """One decode step (T == 1)."""
        ...
