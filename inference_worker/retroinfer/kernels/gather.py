"""Copy runs of K/V rows between buffers: retrieved clusters from the source (device memory or
pinned host memory, read zero-copy over PCIe) into the execution buffer, and admitted misses
from the execution buffer into wave-buffer pages. Only the valid rows of each run move.
"""

from __future__ import annotations

import torch

from .availability import pick

COPY_RUNS = 8  # runs per program (their metadata is one load; most admission runs are empty)
COPY_WARPS = 2


def copy_runs(
    src_k: torch.Tensor,  # base of the source keys (any shape; offsets count elements from it)
    src_v: torch.Tensor,  # base of the source values
    dst_k: torch.Tensor,  # destination keys (contiguous, written in place)
    dst_v: torch.Tensor,  # destination values
    src_off_k: torch.Tensor,  # [E] int64 element offset of each run's first key row
    src_off_v: torch.Tensor,  # [E] int64 element offset of each run's first value row
    dst_off: torch.Tensor,  # [E] int64 element offset of each run's destination
    rows: torch.Tensor,  # [E] int64 rows per run (0 = nothing)
    head_dim: int,
    use_triton: bool | None = None,
    block_rows: int = 16,
) -> None:
    """For each run e: dst[dst_off[e] : + rows[e] * D] = src[src_off[e] : + rows[e] * D].
    Offsets may point into other allocations than the base (one address space: device memory
    and pinned host memory alike); the reference only handles offsets inside the base.
    `block_rows` (a power of two) is the copy tile: about the typical run length."""
    if not pick(use_triton, dst_k):
        copy_runs_reference(
            src_k, src_v, dst_k, dst_v, src_off_k, src_off_v, dst_off, rows, head_dim
        )
        return
    from ._gather_triton import copy_runs_kernel

    e = rows.shape[0]
    if e == 0:
        return
    grid = ((e + COPY_RUNS - 1) // COPY_RUNS,)
    copy_runs_kernel[grid](
        src_k, src_v, dst_k, dst_v, src_off_k, src_off_v, dst_off, rows, e,
        D=head_dim, BLOCK=block_rows, RUNS=COPY_RUNS, num_warps=COPY_WARPS,
    )  # fmt: skip


def copy_runs_reference(
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    src_off_k: torch.Tensor,
    src_off_v: torch.Tensor,
    dst_off: torch.Tensor,
    rows: torch.Tensor,
    head_dim: int,
) -> None:
    """torch reference (offsets relative to the base tensors; one host sync)."""
    n = int(rows.max().item()) if rows.numel() else 0
    if n == 0:
        return
    dev = dst_k.device
    step = torch.arange(n, device=dev) * head_dim  # [n]
    valid = (torch.arange(n, device=dev) < rows.unsqueeze(1)).view(-1)  # [E * n]
    cols = torch.arange(head_dim, device=dev)

    def idx(off: torch.Tensor) -> torch.Tensor:
        start = (off.unsqueeze(1) + step).view(-1)[valid]  # [V]
        return (start.unsqueeze(1) + cols).view(-1).to(torch.int64)

    flat_dk, flat_dv = dst_k.view(-1), dst_v.view(-1)
    flat_dk[idx(dst_off)] = src_k.reshape(-1)[idx(src_off_k)].to(dst_k.dtype).to(dev)
    flat_dv[idx(dst_off)] = src_v.reshape(-1)[idx(src_off_v)].to(dst_v.dtype).to(dev)
