"""Device table of where every cluster of a batch of segments lies, for one-kernel fetches.

Segments may live in device memory or in pinned host memory (read zero-copy over PCIe by the
copy kernel). Offsets are element offsets from the first segment's keys/values, so clusters of
all segments are copied by one launch.
"""

from __future__ import annotations

import torch

from .availability import pick
from .gather import copy_runs

MAX_FETCH_BLOCK = 8192  # requested clusters per row one program handles


class ClusterTable:
    """Per (sequence, kv_head) row: element offset and size of every global cluster id."""

    def __init__(self, segments: list, device: torch.device) -> None:  # list[IndexSegment]
        first = segments[0]
        b, h = first.sizes.shape[:2]
        d = first.keys.shape[-1]
        self.base_k, self.base_v = first.keys, first.values
        self.head_dim, self.device = d, device
        elem = first.keys.element_size()
        rows = torch.arange(b * h, device=device).view(b, h, 1)
        tab_k, tab_v, size = [], [], []
        for seg in segments:
            offs = seg.offsets.to(device)  # [B, H, C_s + 1]
            n = seg.keys.shape[2]
            start = (rows * n + offs[..., :-1]) * d  # element offsets inside the segment
            tab_k.append(start + (seg.keys.data_ptr() - self.base_k.data_ptr()) // elem)
            tab_v.append(start + (seg.values.data_ptr() - self.base_v.data_ptr()) // elem)
            size.append(offs[..., 1:] - offs[..., :-1])
        self.tab_k = torch.cat(tab_k, dim=2)  # [B, H, C]
        self.tab_v = torch.cat(tab_v, dim=2)
        self.size = torch.cat(size, dim=2)
        self.segments = segments  # keep the memory alive

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
