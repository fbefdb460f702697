"""The wave buffer's bookkeeping of one decode step in two fused kernels.

`plan_step` (before the misses are fetched): overflow of the execution buffer, hit/miss lookup,
LRU touch of the hits, the compacted miss list and the page table of the hits. `admit_step`
(after the exact attention): eviction of whole least-recent clusters, placement of the admitted
misses into free pages, their stamps, the copy of their rows, and the step's counts.

The reference (`use_triton=False`) is the torch code of `WaveBuffer` (`lookup`, `hit_table`,
`admit`) plus `step_counts`; both leave the same buffer state (owner, fill, stamp, clock,
counters, the valid rows of every owned page) and return the same outputs. The fused pair
touches the hits' stamps in `plan_step` instead of `admit_step` (nothing reads them in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..stats import step_counts
from .availability import pick
from .decode_attention import CopyIn
from .gather import copy_runs
from .rank import sort_retrieved

if TYPE_CHECKING:
    from ..wave_buffer import WaveBuffer
    from .cluster_table import ClusterTable

MAX_BLOCK_P = 4096  # pages per row one program holds in registers (larger: the reference)
MAX_BLOCK_N = 1024  # retrieved clusters per row
BOOK_WARPS = 4  # warps of the plan and admit programs (one program per row)


@dataclass(slots=True)
class StepPlan:
    """What a step decided before attending (R rows, n retrieved clusters per row)."""

    ret: torch.Tensor  # [R, n] int64 retrieved ids, best first
    ret_sizes: torch.Tensor  # [R, n] int64 tokens per retrieved cluster
    overflow: torch.Tensor  # [R, n] bool: did not fit the execution buffer (estimated)
    valid: torch.Tensor  # [R, n] bool: attended exactly
    hit: torch.Tensor  # [R, n] bool
    miss: torch.Tensor  # [R, n] bool
    miss_ids: torch.Tensor  # [R, n] int64 misses first in rank order, then -1
    take: torch.Tensor  # [R, W] int64 page table, hit pages first
    fill: torch.Tensor  # [R, W] int64 valid tokens per taken page (0 past the hit pages)
    count: torch.Tensor  # [R] int64 hit pages at the front of `take`
    fused: bool
    miss_rank: torch.Tensor | None = None  # [R, n] fused: rank position of each listed miss
    miss_sizes: torch.Tensor | None = None  # [R, n] fused: tokens of each listed miss
    # [7] fused: the step's counts (COUNT_NAMES order), summed by the kernels' atomic adds
    totals: torch.Tensor | None = None
    overflow_ids: torch.Tensor | None = None  # [R, n] fused: where(overflow, ret, -1)
    hit_count: torch.Tensor | None = None  # [R] fused: `count` as planned (admission extends
    # `count` in place; this copy keeps the hit pages' length)

    def hit_pages(self) -> torch.Tensor:
        """[R] int64 the hit pages at the front of `take`, whatever admission appended since."""
        return self.hit_count if self.hit_count is not None else self.count.clone()

    def overflowed(self) -> torch.Tensor:
        """[R, n] int64 ids of the retrieved clusters that overflowed (estimated), else -1."""
        if self.overflow_ids is not None:
            return self.overflow_ids
        return torch.where(self.overflow, self.ret, -1)


def fusable(buffer: WaveBuffer, n: int) -> bool:
    """Whether one program per row can hold the row's pages and retrieved list."""
    return _pow2(buffer.pages + 1) <= MAX_BLOCK_P and _pow2(n) <= MAX_BLOCK_N


def plan_step(
    buffer: WaveBuffer,
    ret: torch.Tensor,  # [R, n] int64 retrieved ids, best first
    sizes: torch.Tensor,  # [R, C] int64 tokens per cluster
    cap_tokens: int,  # execution-buffer capacity for retrieved tokens
    width: int,  # hit pages in the page table
    use_triton: bool | None = None,
    score: torch.Tensor | None = None,  # [R, n] fp32: `ret` is unsorted, rank it by this
) -> StepPlan:
    """The step's plan (see StepPlan): the fused kernel (Triton, rows one program can hold)
    or the torch reference."""
    if not (pick(use_triton, ret) and fusable(buffer, ret.shape[1])):
        if score is not None:
            ret = sort_retrieved(ret, score)
        return plan_step_reference(buffer, ret, sizes, cap_tokens, width)
    return _plan_fused(buffer, ret, sizes, cap_tokens, width, score)


def _plan_fused(
    buffer: WaveBuffer,
    ret: torch.Tensor,
    sizes: torch.Tensor,
    cap_tokens: int,
    width: int,
    score: torch.Tensor | None,
) -> StepPlan:
    """The plan kernel's launch."""
    from ._book_triton import plan_kernel

    r, n = ret.shape
    dev, i64, i8 = ret.device, torch.int64, torch.int8
    ret = ret.contiguous()
    ranked = torch.empty_like(ret) if score is not None else ret
    flags = torch.empty(4, r, n, dtype=i8, device=dev)  # overflow, valid, hit, miss
    names = ("sizes", "ids", "rank", "msz", "ovf")
    out = {k: torch.empty(r, n, dtype=i64, device=dev) for k in names}
    take = torch.empty(r, width, dtype=i64, device=dev)
    fill = torch.empty(r, width, dtype=i64, device=dev)
    count = torch.empty(r, dtype=i64, device=dev)
    hit_count = torch.empty(r, dtype=i64, device=dev)
    totals = torch.zeros(7, dtype=i64, device=dev)  # entries 2-4 added by admission
    plan_kernel[(r,)](
        ret, ret if score is None else score.contiguous(), ranked, sizes.contiguous(),
        buffer.stamp, buffer.owner, buffer.fill, buffer.clock,
        out["sizes"], flags[0], flags[1], flags[2], flags[3], out["ovf"],
        out["ids"], out["rank"], out["msz"], take, fill, count, hit_count,
        buffer.hits, buffer.misses, totals,
        n, buffer.num_clusters, buffer.pages + 1, width, cap_tokens,
        SORT=score is not None, BLOCK_N=_pow2(n), BLOCK_P=_pow2(buffer.pages + 1),
        num_warps=BOOK_WARPS,
    )  # fmt: skip
    b = flags.view(torch.bool)
    return StepPlan(
        ranked, out["sizes"], b[0], b[1], b[2], b[3], out["ids"], take, fill, count, True,
        out["rank"], out["msz"], totals, out["ovf"], hit_count,
    )  # fmt: skip


def plan_step_reference(
    buffer: WaveBuffer, ret: torch.Tensor, sizes: torch.Tensor, cap_tokens: int, width: int
) -> StepPlan:
    from ..wave_buffer import compact_order

    ret_sizes = sizes.gather(1, ret)
    overflow = (ret_sizes > 0) & (ret_sizes.cumsum(1) > cap_tokens)
    valid = (ret_sizes > 0) & ~overflow
    hit = buffer.lookup(ret, valid)
    miss = valid & ~hit
    order, kept = compact_order(miss)
    miss_ids = torch.where(kept, ret.gather(1, order), -1)
    take, fill, count = buffer.hit_table(ret, hit, width)
    return StepPlan(ret, ret_sizes, overflow, valid, hit, miss, miss_ids, take, fill, count, False)


def admit_step(
    buffer: WaveBuffer,
    plan: StepPlan,
    miss_k: torch.Tensor,  # [R, M, D] misses packed in `plan.miss_ids` order
    miss_v: torch.Tensor,  # [R, M, D]
    miss_off: torch.Tensor,  # [R, n + 1] int64 token offsets of the packed misses
) -> torch.Tensor:
    """Admit the step's misses after the attention, copying them from the packed miss rows;
    returns the step's counts [7] (COUNT_NAMES order)."""
    if not plan.fused:
        admitted = buffer.admit(
            plan.ret, plan.valid, plan.hit, plan.ret_sizes, miss_k, miss_v, miss_off
        )
        return step_counts(plan.hit, plan.miss, admitted, plan.overflow, plan.valid, plan.ret_sizes)
    return _admit_fused(buffer, plan, miss_k, miss_v, miss_off, None)[1]


def admit_direct(
    buffer: WaveBuffer,
    plan: StepPlan,  # a fused plan
    table: ClusterTable,  # where the source's clusters lie (device or pinned host memory)
    take: torch.Tensor,  # [R, W] the plan's page table (admitted pages are appended)
    fill: torch.Tensor,  # [R, W]
    count: torch.Tensor,  # [R]
    copy: bool = True,
    tick: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, CopyIn]:
    """Admission before the attention, straight from the source: admitted misses move once
    (source -> their cache pages) and are attended there. Same buffer state and counts as
    `admit_step` once the pages hold their rows. Returns (rest_ids [R, n]: the misses not
    admitted, then -1; counts [7]; the admission runs as a CopyIn [R, W]).
    copy True: the rows are copied here (a copy kernel); the rest is to be fetched packed.
    copy False: nothing is copied; the caller attends the appended pages through an ExecView
    with `copy_in` (the decode kernel fills them as it reads them), and the rest's pages are
    appended too, as the scratch page with their source runs: attended in place, no fetch.
    The page table must then have room for every miss page (W >= hit pages + miss pages).
    tick False: the LRU clock is left for the caller to advance (by n + 1, once nothing of
    this step reads it any more)."""
    direct = (table, take, fill, count)
    rest, counts, runs = _admit_fused(
        buffer, plan, table.base_k, table.base_v, None, direct, copy, tick
    )
    r = take.shape[0]
    copy_in = CopyIn(table.base_k, table.base_v, runs[0].view(r, -1), runs[1].view(r, -1))
    return rest, counts, copy_in


def _admit_fused(
    buffer: WaveBuffer,
    plan: StepPlan,
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    miss_off: torch.Tensor | None,
    direct: tuple[ClusterTable, torch.Tensor, torch.Tensor, torch.Tensor] | None,
    copy: bool = True,
    tick: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rest ids, counts, runs [4, R * SW]: src k, src v, dst, rows offsets per run slot; SW
    is P1, or the page table's width for a direct admission without copy)."""
    from ._book_triton import admit_kernel

    assert plan.miss_rank is not None and plan.miss_sizes is not None
    assert plan.totals is not None
    r, n = plan.ret.shape
    p1, pt, d = buffer.pages + 1, buffer.page_tokens, buffer.keys.shape[-1]
    dev = buffer.keys.device
    left = direct is not None and not copy  # left-over misses listed for in-place attention
    sw = direct[1].shape[1] if left and direct is not None else p1
    block_p, block_n, block_s = _pow2(p1), _pow2(n), _pow2(sw)
    scratch = buffer.scratch(block_p + block_s + block_n)
    runs = torch.empty(4, r * sw, dtype=torch.int64, device=dev)  # src k, src v, dst, rows
    rest = torch.empty(r, n, dtype=torch.int64, device=dev) if direct else plan.miss_ids
    if direct is None:
        assert miss_off is not None
        tab_k = tab_v = take = fill = count = miss_off
        off, m_width, c_tab, width = miss_off.contiguous(), src_k.shape[1], 1, 1
    else:
        table, take, fill, count = direct
        tab_k, tab_v, off = table.tab_k, table.tab_v, plan.miss_ids
        m_width, c_tab, width = 1, table.tab_k.shape[2], take.shape[1]
    admit_kernel[(r,)](
        plan.miss_ids, plan.miss_rank, plan.miss_sizes, off,
        buffer.stamp, buffer.owner, buffer.fill, buffer.clock, scratch,
        buffer.evictions, plan.totals, runs[0], runs[1], runs[2], runs[3],
        tab_k, tab_v, take, fill, count, rest,
        n, buffer.num_clusters, p1, m_width, scratch.shape[1], c_tab, width, sw,
        PT=pt, D=d, BLOCK_N=block_n, BLOCK_P=block_p, BLOCK_S=block_s,
        DIRECT=direct is not None, LEFT=left, num_warps=BOOK_WARPS,
    )  # fmt: skip
    if tick:
        buffer.advance_clock(n)
    if copy:
        copy_runs(
            src_k, src_v, buffer.keys, buffer.values, runs[0], runs[1], runs[2], runs[3], d,
            use_triton=True, block_rows=pt if pt & (pt - 1) == 0 else 16,
        )  # fmt: skip
    return rest, plan.totals, runs


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()
