"""GPU gather of whole clusters (contiguous row runs) from pinned host memory.

Program (i, j) copies rows j * BLOCK_R + k * SPLIT * BLOCK_R (+ BLOCK_R) of run i: `lens[i]`
rows of `W` machine words from row `src_start[i]` of `src` (a CUDA tensor aliasing registered
host memory, read over PCIe) to row `dst_start[i]` of `out` (device memory). A whole cluster
(16 rows x 256 B = 4 KiB for bf16 / D=128) is one tile of 16-byte loads per thread, and every
run is its own program, so a large call keeps thousands of PCIe reads in flight; runs longer
than a tile are split across SPLIT programs. `gather_runs_reference` is the plain torch
version the tests compare against (the kernel also runs under TRITON_INTERPRET=1 on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wavekv_proto.layout import EXTENT_MAGIC

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: callers use gather_runs_reference
    triton = None

MAX_SPLIT = 64  # programs per run at most (runs longer than SPLIT tiles loop)


@dataclass(slots=True)
class GatherConfig:
    """Launch shape: bytes per program tile (rows = tile_bytes / row bytes) and warps."""

    tile_bytes: int = 4096
    num_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("tile_bytes", "num_warps"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name}={v} must be a power of two >= 1")


CONFIG = GatherConfig()  # what gather_runs uses unless told otherwise (benchmarks sweep it)


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
        SPLIT: tl.constexpr,  # programs per run (grid axis 1)
    ):
        pid = tl.program_id(0)
        part = tl.program_id(1)
        s = tl.load(src_start + pid)
        d = tl.load(dst_start + pid)
        n = tl.load(lens + pid)
        cols = tl.arange(0, W)
        r0 = part.to(tl.int64) * BLOCK_R
        while r0 < n:  # a while loop: the interpreter cannot range() over a loaded bound
            r = r0 + tl.arange(0, BLOCK_R)
            m = (r < n)[:, None]
            vals = tl.load(src + (s + r)[:, None] * W + cols[None, :], mask=m)
            tl.store(out + (d + r)[:, None] * W + cols[None, :], vals, mask=m)
            r0 += SPLIT * BLOCK_R


assert EXTENT_MAGIC < 2**63  # the same value as int64

if triton is not None:
    MAGIC = tl.constexpr(EXTENT_MAGIC)

    @triton.jit
    def _check_words(base, at, expected, flag, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        word = tl.load(at + i, mask=m, other=0)
        magic = tl.load(base + word, mask=m, other=MAGIC)
        generation = tl.load(base + word + 1, mask=m, other=0)
        want = tl.load(expected + i, mask=m, other=0)
        stale = m & ((magic != MAGIC) | (generation != want))
        tl.atomic_max(flag, tl.max(stale.to(tl.int64), axis=0))


def check_headers(
    base: torch.Tensor,  # [*] int64 alias of registered host memory (only its pointer is used)
    at: torch.Tensor,  # [E] int64 word index (from base) of each extent header
    expected: torch.Tensor,  # [E] int64 generation each header must still hold
    flag: torch.Tensor,  # [>= 1] int64: element 0 becomes 1 if any header changed
) -> None:
    """Re-read extent headers from the GPU, ordered after earlier work on the stream (a
    gather launched before it has finished its reads when this runs)."""
    n = int(at.shape[0])
    if n:
        _check_words[(triton.cdiv(n, 256),)](base, at, expected, flag, n, BLOCK=256)


def check_headers_reference(
    words: torch.Tensor,  # [N] int64 host words
    at: torch.Tensor,  # [E]
    expected: torch.Tensor,  # [E]
) -> torch.Tensor:
    """Plain indexing (the reference for check_headers)."""
    return (words[at] != EXTENT_MAGIC) | (words[at + 1] != expected)


def gather_runs(
    src: torch.Tensor,  # [R, W]
    out: torch.Tensor,  # [N, W]
    src_start: torch.Tensor,  # [K] int64
    dst_start: torch.Tensor,  # [K] int64
    lens: torch.Tensor,  # [K] int64
    max_len: int | None = None,
    config: GatherConfig | None = None,
) -> None:
    """out[dst_start[i] + r] = src[src_start[i] + r] for r < lens[i], for every run i.

    `max_len` (the longest run; read from `lens` if None, a device sync) sets how many programs
    share a run; `config` defaults to CONFIG."""
    k = int(src_start.shape[0])
    if k == 0:
        return
    config = config or CONFIG
    w = src.shape[1]
    block_rows = max(1, config.tile_bytes // (w * src.element_size()))
    if max_len is None:
        max_len = int(lens.max())
    tiles = max(1, -(-max_len // block_rows))
    split = min(1 << (tiles - 1).bit_length(), MAX_SPLIT)  # a power of two: few compilations
    _gather_runs[(k, split)](
        src, out, src_start, dst_start, lens, W=w, BLOCK_R=block_rows, SPLIT=split,
        num_warps=config.num_warps,
    )  # fmt: skip


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
