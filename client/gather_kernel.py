"""GPU gather of whole clusters (contiguous row runs) from pinned host memory.

One Triton program copies one run: `lens[i]` rows of `W` machine words from row `src_start[i]` of
`src` (a CUDA tensor aliasing registered host memory, read over PCIe) to row `dst_start[i]` of
`out` (device memory). Reading whole clusters (16 rows x 256 B = 4 KiB for bf16 / D=128) keeps
PCIe reads large. `gather_runs_reference` is the plain torch version the tests compare against
(the kernel also runs under TRITON_INTERPRET=1 on CPU tensors).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: callers use gather_runs_reference
    triton = None


def available(words: int) -> bool:
    """The kernel handles rows whose word count is a power of two (tl.arange needs one)."""
    return triton is not None and words > 0 and words & (words - 1) == 0


if triton is not None:

    @triton.jit
    def _gather_runs(
        src,  # [R, W] words (host memory, UVA)
        out,  # [N, W] words (device)
        src_start,  # [K] int64
        dst_start,  # [K] int64
        lens,  # [K] int64
        W: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        pid = tl.program_id(0)
        s = tl.load(src_start + pid)
        d = tl.load(dst_start + pid)
        n = tl.load(lens + pid)
        cols = tl.arange(0, W)
        for r0 in range(0, n, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            m = (r < n)[:, None]
            vals = tl.load(src + (s + r)[:, None] * W + cols[None, :], mask=m)
            tl.store(out + (d + r)[:, None] * W + cols[None, :], vals, mask=m)


def gather_runs(
    src: torch.Tensor,  # [R, W]
    out: torch.Tensor,  # [N, W]
    src_start: torch.Tensor,  # [K] int64
    dst_start: torch.Tensor,  # [K] int64
    lens: torch.Tensor,  # [K] int64
    block_rows: int = 16,
) -> None:
    """out[dst_start[i] + r] = src[src_start[i] + r] for r < lens[i], for every run i."""
    k = int(src_start.shape[0])
    if k == 0:
        return
    _gather_runs[(k,)](src, out, src_start, dst_start, lens, W=src.shape[1], BLOCK_R=block_rows)


def gather_runs_reference(
    src: torch.Tensor,
    out: torch.Tensor,
    src_start: torch.Tensor,
    dst_start: torch.Tensor,
    lens: torch.Tensor,
) -> None:
    """Plain per-run slicing (the reference for gather_runs)."""
    for s, d, n in zip(src_start.tolist(), dst_start.tolist(), lens.tolist(), strict=True):
        out[d : d + n] = src[s : s + n]
