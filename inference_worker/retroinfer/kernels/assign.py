"""Nearest-centroid assignment by inner product: labels = argmax_c <x_n, c_c>, batched over rows.

The Triton kernel fuses the batched matmul with the argmax: each program holds BLOCK_N tokens,
loops over centroid tiles (tensor-core products, fp32 accumulate) and keeps a running max and
first argmax per token, so the [N, C] score matrix is never materialised. The torch reference
materialises fp32 scores. Both round (x - shift) to the centroids' dtype before the product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .availability import interpreting, pick
from .sizes import next_pow2

MAX_GRID_ROWS = 65535  # rows are the second grid axis


@dataclass(slots=True, frozen=True)
class AssignTiles:
    """Tile shape and launch settings of the assignment kernel on CUDA."""

    block_n: int = 128  # tokens per program
    block_c: int = 64  # centroids per tile of the inner loop
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_n", "block_c"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {self.num_stages!r}")


DEFAULT_TILES = AssignTiles()  # fastest final pass in results/index_build_sweep_cuda.json


def assign_labels(
    x: torch.Tensor,  # [R, N, D] any float dtype; rows may be strided (token stride D)
    centroids: torch.Tensor,  # [R', C, D] the product dtype (bf16 / fp16 / fp32)
    lengths: torch.Tensor | None = None,  # [R'] int valid tokens per row (default: all)
    shift: torch.Tensor | None = None,  # [R, D] fp32 subtracted from x (in fp32) first
    use_triton: bool | None = None,
    tiles: AssignTiles = DEFAULT_TILES,
    num_segments: int = 1,
) -> torch.Tensor:
    """labels [R', W] int32: argmax_c <round(x_row[n] - shift), centroids[row, c]> (first index
    on ties); tokens at n >= lengths[row] get label C. With num_segments S, row r * S + s is the
    segment x[r, s * N // S : (s + 1) * N // S] (R' = R * S, W = ceil(N / S), the segment's own
    length unless `lengths` is given), read in place; otherwise R' = R, W = N."""
    _check(x, centroids, lengths, shift, num_segments)
    if centroids.shape[0] > MAX_GRID_ROWS or not pick(use_triton, x):
        return assign_labels_reference(x, centroids, lengths, shift, num_segments)
    return _assign_triton(x, centroids, lengths, shift, tiles, num_segments)


def assign_labels_reference(
    x: torch.Tensor,
    centroids: torch.Tensor,
    lengths: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    num_segments: int = 1,
) -> torch.Tensor:
    """torch reference: padded segment copy, materialised fp32 scores, argmax."""
    x, lengths, shift = padded_segments(x, lengths, shift, num_segments)
    n = x.shape[1]
    c = centroids.shape[1]
    xe = x.float() - shift.unsqueeze(1) if shift is not None else x
    xe = xe.to(centroids.dtype)
    if centroids.dtype == torch.float32 or not x.is_cuda:
        scores = torch.bmm(xe.float(), centroids.float().transpose(1, 2))  # [R, N, C]
    else:
        scores = torch.bmm(xe, centroids.transpose(1, 2), out_dtype=torch.float32)
    labels = scores.argmax(dim=-1).to(torch.int32)  # [R, N]
    if lengths is not None:
        valid = torch.arange(n, device=x.device) < lengths.to(x.device).unsqueeze(1)
        labels = torch.where(valid, labels, c)
    return labels


def padded_segments(
    x: torch.Tensor,  # [R, N, D]
    lengths: torch.Tensor | None,
    shift: torch.Tensor | None,  # [R, D]
    num_segments: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The segments of each row as a padded copy: (x [R * S, W, D], lengths [R * S] (the given
    ones, else the segment lengths), shift [R * S, D]). S = 1 returns the inputs."""
    if num_segments == 1:
        return x, lengths, shift
    r, n, d = x.shape
    starts, seg_len = segment_starts(n, num_segments, x.device)  # [S], [S]
    width = -(-n // num_segments)
    idx = (starts.unsqueeze(1) + torch.arange(width, device=x.device)).clamp(max=n - 1)
    padded = x[:, idx.reshape(-1)].reshape(r * num_segments, width, d)
    if lengths is None:
        lengths = seg_len.repeat(r)
    rep = shift.repeat_interleave(num_segments, dim=0) if shift is not None else None
    return padded, lengths, rep


def segment_starts(n: int, num_segments: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """First token and length of the near-equal segments s * N // S: ([S], [S]) int64."""
    bounds = torch.arange(num_segments + 1, device=device, dtype=torch.int64) * n // num_segments
    return bounds[:-1], bounds.diff()


def row_layout(
    x: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    """Kernel view of x's rows (or segments): (x with token stride D and row stride a multiple
    of D, first token of each row [R'] int64 counted in D-element rows from x's start, width W,
    segment lengths [R'] or None)."""
    r, n, d = x.shape
    if x.stride(2) != 1 or x.stride(1) != d or x.stride(0) % d:
        x = x.contiguous()
    row0 = torch.arange(r, device=x.device, dtype=torch.int64) * (x.stride(0) // d)  # [R]
    if num_segments == 1:
        return x, row0, n, None
    starts, seg_len = segment_starts(n, num_segments, x.device)
    offs = (row0.unsqueeze(1) + starts).reshape(-1)  # [R * S]
    return x, offs, -(-n // num_segments), seg_len.repeat(r)


def sort_clusters(labels: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster-major order of labels [R, N] (stable: members in token order; labels equal to
    num_clusters, i.e. padding, go last). Returns (order [R, N] int64, offsets [R, C + 1] int64:
    members of cluster c are order[r, offsets[r, c] : offsets[r, c + 1]])."""
    sorted_labels, order = torch.sort(labels, dim=1, stable=True)
    bounds = torch.arange(num_clusters + 1, device=labels.device, dtype=labels.dtype)
    bounds = bounds.expand(labels.shape[0], -1).contiguous()  # [R, C + 1]
    return order, torch.searchsorted(sorted_labels, bounds)


def _assign_triton(
    x: torch.Tensor,
    centroids: torch.Tensor,
    lengths: torch.Tensor | None,
    shift: torch.Tensor | None,
    tiles: AssignTiles,
    num_segments: int,
) -> torch.Tensor:
    from ._assign_triton import assign_kernel

    x, starts, width, seg_len = row_layout(x, num_segments)
    lengths = lengths if lengths is not None else seg_len
    rows, c, d = centroids.shape
    centroids = centroids.contiguous()
    out = torch.empty(rows, width, dtype=torch.int32, device=x.device)
    if width == 0 or rows == 0:
        return out
    interp = interpreting()
    block_n, block_c = (32, 32) if interp else (tiles.block_n, tiles.block_c)
    lens = lengths.to(device=x.device, dtype=torch.int64).contiguous() if lengths is not None else x
    sh = shift.to(device=x.device, dtype=torch.float32).contiguous() if shift is not None else x
    grid = ((width + block_n - 1) // block_n, rows)
    assign_kernel[grid](
        x, starts, centroids, sh, lens, out, width, c, num_segments,
        HAS_SHIFT=shift is not None, HAS_LEN=lengths is not None, D=d,
        BLOCK_D=max(16, next_pow2(d)), BLOCK_N=block_n, BLOCK_C=block_c,
        EVEN_C=c % block_c == 0, PRECISION="ieee" if centroids.dtype == torch.float32 else None,
        INTERPRET=interp, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return out


def _check(
    x: torch.Tensor,
    centroids: torch.Tensor,
    lengths: torch.Tensor | None,
    shift: torch.Tensor | None,
    num_segments: int,
) -> None:
    if x.dim() != 3 or centroids.dim() != 3:
        raise ValueError(
            f"x and centroids must be [R, N, D] and [R, C, D], got {list(x.shape)} and "
            f"{list(centroids.shape)}"
        )
    r, n, d = x.shape
    if not 1 <= num_segments <= max(n, 1):
        raise ValueError(f"num_segments must be in [1, N = {n}], got {num_segments!r}")
    rows = r * num_segments
    if centroids.shape[0] != rows or centroids.shape[2] != d or centroids.shape[1] == 0:
        raise ValueError(
            f"centroids must be [R * S, C >= 1, D] = [{rows}, C, {d}], got {list(centroids.shape)}"
        )
    if lengths is not None and tuple(lengths.shape) != (rows,):
        raise ValueError(f"lengths must be [R * S] = [{rows}], got {list(lengths.shape)}")
    if shift is not None and tuple(shift.shape) != (r, d):
        raise ValueError(f"shift must be [R, D] = [{r}, {d}], got {list(shift.shape)}")
