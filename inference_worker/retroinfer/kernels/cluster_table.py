"""Device table of where every cluster of a batch of sequences lies, for one-kernel fetches and
for the decode step's direct admission.

Clusters may live in device memory or in pinned host memory (read zero-copy over PCIe by the
kernels). Offsets are element offsets from one base address per table (`base_k` / `base_v`),
so clusters of any segment, of any sequence, are read by one launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .availability import pick
from .gather import copy_runs

MAX_FETCH_BLOCK = 8192  # requested clusters per row one program handles


@dataclass(slots=True)
class ClusterRows:
    """Where one sequence's clusters lie: per KV head, element offsets from a base address."""

    tab_k: torch.Tensor  # [H, C] int64 element offset of each cluster's first key row
    tab_v: torch.Tensor  # [H, C] int64 of its first value row
    size: torch.Tensor  # [H, C] int64 tokens per cluster

    @classmethod
    def of_parts(
        cls,
        parts: list[tuple[Any, int]],  # [(IndexSegment, the sequence's row in it)]
        base_k: torch.Tensor,
        base_v: torch.Tensor,
    ) -> ClusterRows:
        """The rows of one sequence's segments (in cluster order), offsets from base_k/v."""
        tab_k, tab_v, size = [], [], []
        for seg, row in parts:
            h, n, d = seg.keys.shape[1:]
            offs = seg.offsets[row].to(base_k.device if base_k.is_cuda else seg.offsets.device)
            start = (torch.arange(h, device=offs.device).view(h, 1) * n + offs[:, :-1]) * d
            tab_k.append(start + _delta(seg.keys[row], base_k))
            tab_v.append(start + _delta(seg.values[row], base_v))
            size.append(offs[:, 1:] - offs[:, :-1])
        return cls(torch.cat(tab_k, dim=1), torch.cat(tab_v, dim=1), torch.cat(size, dim=1))


class ClusterTable:
    """Per (slot, kv_head) row: element offset and size of every cluster id of the slot's
    sequence (a free slot's row: no cluster). Kept in place as slots change (a captured step
    keeps reading the same tensors); widened when a slot holds more clusters than it has."""

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        base_k: torch.Tensor,
        base_v: torch.Tensor,
        device: torch.device,
    ) -> None:
        self.base_k, self.base_v = base_k, base_v
        self.head_dim, self.device = head_dim, device
        self.tab_k = torch.zeros(batch, heads, 0, dtype=torch.int64, device=device)  # [B, H, C]
        self.tab_v = torch.zeros_like(self.tab_k)
        self.size = torch.zeros_like(self.tab_k)

    @classmethod
    def of_rows(
        cls,
        rows: list[ClusterRows | None],  # per slot (None: free)
        base_k: torch.Tensor,
        base_v: torch.Tensor,
        head_dim: int,
        device: torch.device,
    ) -> ClusterTable:
        heads = next(r.size.shape[0] for r in rows if r is not None)
        table = cls(len(rows), heads, head_dim, base_k, base_v, device)
        for slot, row in enumerate(rows):
            if row is not None:
                table.set(slot, row)
        return table

    def set(self, slot: int, rows: ClusterRows) -> None:
        """Slot `slot` holds these rows (the rest of its row: no cluster)."""
        c = rows.size.shape[1]
        if c > self.size.shape[2]:
            self._widen(c)
        for name in ("tab_k", "tab_v", "size"):
            dst = getattr(self, name)
            dst[slot, :, :c] = getattr(rows, name).to(self.device)
            dst[slot, :, c:] = 0

    def clear(self, slot: int) -> None:
        self.size[slot] = 0

    def _widen(self, width: int) -> None:
        b, h, c = self.size.shape
        for name in ("tab_k", "tab_v", "size"):
            old = getattr(self, name)
            new = torch.zeros(b, h, width, dtype=torch.int64, device=self.device)
            new[:, :, :c] = old
            setattr(self, name, new)

    def fetch(
        self, cluster_ids: torch.Tensor, max_tokens: int, use_triton: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cluster_ids [B, H, n] (-1 = none) -> keys, values [B, H, max_tokens, D] (rows past
        offsets[..., -1] unspecified), offsets [B, H, n + 1]. The index math is one Triton
        kernel (`use_triton` None/True where it can run) or torch (`runs_reference`)."""
        ids = cluster_ids.to(self.device)
        b, h, n = ids.shape
        if pick(use_triton, ids) and n <= MAX_FETCH_BLOCK:
            offsets, runs = self._runs_triton(ids, max_tokens)
        else:
            offsets, runs = self.runs_reference(ids, max_tokens)
        shape = (b, h, max_tokens, self.head_dim)
        keys = torch.empty(shape, dtype=self.base_k.dtype, device=self.device)
        values = torch.empty(shape, dtype=self.base_v.dtype, device=self.device)
        copy_runs(
            self.base_k, self.base_v, keys, values, runs[0], runs[1], runs[2], runs[3],
            self.head_dim,
            use_triton=True,
        )  # fmt: skip
        return keys, values, offsets

    def runs_reference(
        self, ids: torch.Tensor, max_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """torch: (offsets [B, H, n + 1], runs [4, B*H*n] = source key / value element
        offsets, destination element offset, rows)."""
        b, h, n = ids.shape
        valid = ids >= 0
        safe = ids.clamp(min=0)
        size = torch.where(valid, self.size.gather(2, safe), 0)  # [B, H, n]
        offsets = torch.zeros(b, h, n + 1, dtype=torch.int64, device=self.device)
        offsets[..., 1:] = size.cumsum(-1)
        row0 = torch.arange(b * h, device=self.device).view(b, h, 1) * max_tokens
        runs = torch.stack(
            [
                self.tab_k.gather(2, safe).view(-1),
                self.tab_v.gather(2, safe).view(-1),
                ((row0 + offsets[..., :-1]) * self.head_dim).view(-1),
                size.view(-1),
            ]
        )
        return offsets, runs

    def _runs_triton(self, ids: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ._gather_triton import fetch_runs_kernel

        b, h, n = ids.shape
        ids = ids.contiguous()
        offsets = torch.empty(b, h, n + 1, dtype=torch.int64, device=self.device)
        runs = torch.empty(4, b * h * n, dtype=torch.int64, device=self.device)
        fetch_runs_kernel[(b * h,)](
            ids, self.tab_k, self.tab_v, self.size, offsets, runs[0], runs[1], runs[2], runs[3],
            n, self.size.shape[2], max_tokens, D=self.head_dim,
            BLOCK_N=max(1 << max(n - 1, 0).bit_length(), 2), num_warps=4,
        )  # fmt: skip
        return offsets, runs


def _delta(t: torch.Tensor, base: torch.Tensor) -> int:
    """t's address as an element offset from base's (the same element size)."""
    elem = base.element_size()
    diff = t.data_ptr() - base.data_ptr()
    if diff % elem or t.element_size() != elem:
        raise ValueError(f"cannot address a {t.dtype} tensor from a {base.dtype} base")
    return diff // elem
