"""Per-cluster fp32 sums of member rows given a cluster-major order (from `sort_clusters`).

One Triton program per (row, cluster) gathers its members (a contiguous run of the order) and
sums them in fp32: no atomics, no [R, N, D] fp32 copy. Optionally it subtracts a per-row shift
first (centred keys from the raw keys), normalises the sum (spherical k-means update; an empty
cluster keeps its previous centroid) or writes the member rows out cluster-major.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .assign import MAX_GRID_ROWS, padded_segments, row_layout
from .availability import interpreting, pick
from .sizes import next_pow2


def cluster_sums(
    x: torch.Tensor,  # [R, N, D] any float dtype; rows may be strided (token stride D)
    order: torch.Tensor,  # [R', W] int64 cluster-major token order (token index in the row)
    offsets: torch.Tensor,  # [R', C + 1] int64 run bounds of each cluster in `order`
    shift: torch.Tensor | None = None,  # [R, D] fp32 subtracted from every row first
    normalize_prev: torch.Tensor | None = None,  # [R', C, D] fp32: return unit sums instead
    gather: bool = False,
    use_triton: bool | None = None,
    num_segments: int = 1,
    block: int = 16,
    num_warps: int = 2,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sums [R', C, D] fp32, x rows in cluster-major order [R', W, D] if `gather` else None).
    Rows are x's rows, or with num_segments S their segments as in `assign_labels` (R' = R * S).
    With `normalize_prev`, sums are L2-normalised and an empty cluster gets normalize_prev's row.
    Entries of `order` past offsets[:, C] (padding) are not summed (their gathered rows are
    unspecified). `block` rows per step and `num_warps` are the Triton launch settings."""
    if order.shape[0] > MAX_GRID_ROWS or not pick(use_triton, x):
        x, _, shift = padded_segments(x, None, shift, num_segments)
        return cluster_sums_reference(x, order, offsets, shift, normalize_prev, gather)
    return _cluster_sums_triton(
        x, order, offsets, shift, normalize_prev, gather, num_segments, block, num_warps
    )


def cluster_sums_reference(
    x: torch.Tensor,
    order: torch.Tensor,
    offsets: torch.Tensor,
    shift: torch.Tensor | None = None,
    normalize_prev: torch.Tensor | None = None,
    gather: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch reference: gather rows in order, scatter_add by run (members in order)."""
    r, n, d = x.shape
    c = offsets.shape[1] - 1
    rows = x.gather(1, order.unsqueeze(-1).expand(r, n, d))  # [R, N, D] cluster-major
    v = rows.float() - shift.unsqueeze(1) if shift is not None else rows.float()
    pos = torch.arange(n, device=x.device).expand(r, n).contiguous()
    run = torch.searchsorted(offsets[:, 1:].contiguous(), pos, right=True)  # [R, N]; C = padding
    sums = torch.zeros(r, c + 1, d, dtype=torch.float32, device=x.device)
    sums.scatter_add_(1, run.unsqueeze(-1).expand(r, n, d), v)
    sums = sums[:, :c]
    if normalize_prev is not None:
        full = (offsets.diff(dim=1) > 0).unsqueeze(-1)  # [R, C, 1]
        sums = torch.where(full, F.normalize(sums, dim=-1), normalize_prev)
    return sums, rows if gather else None


def _cluster_sums_triton(
    x: torch.Tensor,
    order: torch.Tensor,
    offsets: torch.Tensor,
    shift: torch.Tensor | None,
    normalize_prev: torch.Tensor | None,
    gather: bool,
    num_segments: int,
    block: int,
    num_warps: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from ._assign_triton import cluster_sums_kernel

    x, starts, n, _ = row_layout(x, num_segments)
    r, c, d = offsets.shape[0], offsets.shape[1] - 1, x.shape[2]
    out = torch.empty(r, c, d, dtype=torch.float32, device=x.device)
    rows = torch.empty(r, n, d, dtype=x.dtype, device=x.device) if gather else None
    if r == 0 or c == 0:
        return out, rows
    sh = shift.float().contiguous() if shift is not None else out
    prev = normalize_prev.float().contiguous() if normalize_prev is not None else out
    interp = interpreting()
    cluster_sums_kernel[(c, r)](
        x, starts, order.contiguous(), offsets.contiguous(), sh, prev, out,
        rows if rows is not None else x, n, c, num_segments,
        HAS_SHIFT=shift is not None, NORMALIZE=normalize_prev is not None,
        WRITE_SORTED=gather, D=d, BLOCK_D=max(16, next_pow2(d)), BLOCK=8 if interp else block,
        INTERPRET=interp, num_warps=num_warps,
    )  # fmt: skip
    return out, rows
