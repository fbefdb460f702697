"""Estimation-zone attention from centroid logits, value sums and cluster sizes (split-K).

Every member of an estimated cluster j attends as if its key were the centroid c_j, so per
query head: numerator = sum_j e^{z_j} VS_j, denominator = sum_j s_j e^{z_j}. The result is
returned as split-K partials (max, denominator, numerator per split of the cluster range) so
that it merges with the exact part by the same log-sum-exp combine (`combine_partials`). The
logits z come from the ranking kernel: centroids are not read twice.
"""

from __future__ import annotations

import math

import torch

from .availability import pick
from .partials import Partials, on_side

EST_CHUNK = 512  # list entries per split
EST_BLOCK = 64  # list entries per tile


def estimate_splits(num_entries: int) -> int:
    return max((num_entries + EST_CHUNK - 1) // EST_CHUNK, 1)


def estimate_partials(
    z: torch.Tensor,  # [R, G, C] fp32 logits (-inf for empty clusters)
    estimated: torch.Tensor,  # [R, N] int64 ids of the estimated clusters (-1 = none)
    sizes: torch.Tensor,  # [R, C] int64
    value_sums: torch.Tensor,  # [R, C, D] fp32 or the model dtype
    use_triton: bool | None = None,
    block: int = EST_BLOCK,  # list entries per tile (Triton)
    prefetch: bool = False,  # load the next tile's ids a tile ahead (Triton)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partials (m [R, S, G], l [R, S, G], acc [R, S, G, D]) over S = ceil(N / 512) splits of
    the id list (a cluster listed twice counts twice)."""
    if not pick(use_triton, z):
        return estimate_partials_reference(z, estimated, sizes, value_sums)
    from ._attn_triton import estimate_kernel

    r, g, c = z.shape
    n, d = estimated.shape[1], value_sums.shape[-1]
    s = estimate_splits(n)
    pm, pl, pacc = _empty_partials(r, s, g, d, z.device)
    estimate_kernel[(r, s)](
        z.contiguous(), estimated.contiguous(), sizes.contiguous(),
        value_sums.contiguous(), pm, pl, pacc, n, c, s,
        G=g, GP=16, D=d, CHUNK=EST_CHUNK, BLOCK_C=block, PREFETCH=prefetch, num_warps=4,
    )  # fmt: skip
    return pm, pl, pacc


def estimate_async(
    z: torch.Tensor,  # [R, G, C]
    estimated: torch.Tensor,  # [R, N] int64 (-1 = none)
    sizes: torch.Tensor,  # [R, C] int64
    value_sums: torch.Tensor,  # [R, C, D]
    side: torch.cuda.Stream | None,
    use_triton: bool | None = None,
    block: int = EST_BLOCK,
    prefetch: bool = False,
    after: torch.cuda.Event | None = None,
) -> Partials:
    """estimate_partials on the side stream `side` (see partials.on_side, also for `after`);
    None: in order."""
    args = (z, estimated, sizes, value_sums, use_triton, block, prefetch)
    reads = (z, estimated, sizes, value_sums)
    return on_side(side, estimate_partials, *args, reads=reads, after=after)


def estimate_partials_reference(
    z: torch.Tensor,
    estimated: torch.Tensor,
    sizes: torch.Tensor,
    value_sums: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch reference with the same split layout (gathers the listed clusters first)."""
    r, g, _ = z.shape
    n = estimated.shape[1]
    s = estimate_splits(n)
    pad = s * EST_CHUNK - n
    ok = estimated >= 0
    safe = estimated.clamp(min=0)
    size = torch.where(ok, sizes.gather(1, safe), 0)  # [R, N]
    keep = size > 0
    zk = z.gather(2, safe.unsqueeze(1).expand(r, g, n)).masked_fill(~keep.unsqueeze(1), -math.inf)
    vs = value_sums.gather(1, safe.unsqueeze(-1).expand(r, n, value_sums.shape[-1]))
    zk = torch.nn.functional.pad(zk, (0, pad), value=-math.inf).view(r, g, s, EST_CHUNK)
    size_f = torch.nn.functional.pad(size.float(), (0, pad)).view(r, 1, s, EST_CHUNK)
    vs = torch.nn.functional.pad(vs.float(), (0, 0, 0, pad)).view(r, s, EST_CHUNK, -1)
    m = zk.amax(dim=-1)  # [R, G, S]
    w = torch.exp(zk - m.clamp(min=-1e30).unsqueeze(-1))  # [R, G, S, CH]
    l = (w * size_f).sum(dim=-1)
    acc = torch.einsum("rgsc,rscd->rsgd", w, vs)
    return m.transpose(1, 2).contiguous(), l.transpose(1, 2).contiguous(), acc


def _empty_partials(
    r: int, s: int, g: int, d: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.empty(r, s, g, dtype=torch.float32, device=device),
        torch.empty(r, s, g, dtype=torch.float32, device=device),
        torch.empty(r, s, g, d, dtype=torch.float32, device=device),
    )
