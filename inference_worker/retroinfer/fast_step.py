"""The decode step on the Triton kernels (CUDA): the same semantics and statistics as the torch
reference (`reference.py`), at fixed widths, with no host synchronisation (capturable).

The chain of one step, per layer, for all R = B * Hkv rows:
    select -> plan -> admit -> attend -> combine
1. `rank_select`: the centroid scan (logits) and the selection of the retrieval and
   estimation zones (two kernels).
2. The estimation zone's partials, on side stream 0, forked after the selection.
3. `plan_step`: execution-buffer overflow, hit/miss lookup, LRU touch of the hits, the
   compacted miss list and the page table of the hit pages (one kernel).
4. With the source's cluster table (direct admission: the clusters lie in device memory or in
   pinned host memory, which the GPU reads over PCIe): the steady zone and the cache hits
   are attended on side stream 1 (forked after the plan) while `admit_direct` evicts, places
   the admitted misses and appends their pages to the page table. The decode kernel copies
   each admitted miss from the source into its pages as it attends it (read once), and
   attends in place the misses the cache cannot admit. Otherwise the misses are fetched
   packed (through the table's copy kernel, or the source's fetch for a remote store),
   attended from there and admitted after the attention.
5. The decode kernel over what is left, and one combine of all partials. The LRU clock
   advances on side stream 0 beside the attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import torch

from .kernels import decode_attention, rank_select
from .kernels.bookkeeping import StepPlan, admit_direct, admit_step, fusable, plan_step
from .kernels.decode_attention import DecodeTuning, ExecView, exact_partials
from .kernels.estimate import estimate_async
from .kernels.partials import Partials, mark, on_side
from .misses import device_batch

if TYPE_CHECKING:
    from .kernels.cluster_table import ClusterTable
    from .state import LayerState

# the side pass over the steady zone and the cache hits: each row's hit pages shared by 2
# programs, leaving most of the GPU to admission and the main decode kernel, which it overlaps
HITS_TUNING = DecodeTuning(page_splits=2)
EST_TUNING = DecodeTuning()  # the estimation zone's tiles (est_block) and id prefetch
# clusters per row above which misses are fetched packed instead of admitted straight from the
# source: the direct path's page table lists every miss page and its one-program-per-row plan
# and admission grow with it (at 512K tokens the packed path is faster on the H100)
DIRECT_MAX_CLUSTERS = 16384


@dataclass(slots=True)
class StepResult:
    """What a step leaves: its output and counts, and what the stats may record."""

    out: torch.Tensor  # [R, G, D] fp32
    counts: torch.Tensor  # [7] int64 (COUNT_NAMES order)
    plan: StepPlan
    estimated_ids: torch.Tensor  # [R, n_est] int64 estimation zone (index order)


def fast_step(
    state: LayerState, q: torch.Tensor, pos: torch.Tensor, table: ClusterTable | None
) -> StepResult:
    """One step over every row. q [R, G, D]; pos [R] int64: each row's steady position of the
    new token, already written there; `table` the source's cluster table (None: packed
    fetch)."""
    cfg, c, buffer = state.config, state.num_clusters, state.buffer
    assert buffer is not None, "begin_step builds the wave buffer"
    r, d = state.rows, state.head_dim
    sizes, vs = state.meta.sizes.reshape(r, c), state.meta.value_sums.reshape(r, c, d)
    n_ret, n_est = cfg.retrieval_clusters(c), cfg.estimation_clusters(c)
    direct = table is not None and c <= DIRECT_MAX_CLUSTERS and fusable(buffer, n_ret)
    cs = state.meta.centroid_scale
    sel = rank_select(
        q, state.meta.centroids.reshape(r, c, d), sizes, state.scale, n_ret, n_est, sort=False,
        centroid_scale=cs.reshape(r, c) if cs is not None else None,
    )  # fmt: skip
    side = _side_streams(q.device)
    selected = mark(side is not None)
    cap = state.exec_tokens()
    width = cap // cfg.page_tokens + n_ret if direct else state.hit_page_width()
    plan = plan_step(buffer, sel.retrieved, sizes, cap, width, score=sel.retrieved_score)
    est = estimate_async(
        sel.z, sel.estimated_ids, sizes, vs, side[0] if side else None, True,
        EST_TUNING.est_block, EST_TUNING.prefetch, selected,
    )  # fmt: skip
    early: list[Partials] = [est]
    if not direct:  # admission after the attention advances the LRU clock
        out, counts = _packed(state, q, pos, sel.z, sizes, vs, plan, table, early)
        return StepResult(out, counts, plan, sel.estimated_ids)
    assert table is not None
    out, counts, admitted = _direct(state, q, pos, sel.z, sizes, vs, plan, table, early, side)
    _advance_clock(state, n_ret, side[0] if side else None, admitted)
    return StepResult(out, counts, plan, sel.estimated_ids)


def _direct(
    state: LayerState,
    q: torch.Tensor,
    pos: torch.Tensor,
    z: torch.Tensor,
    sizes: torch.Tensor,
    vs: torch.Tensor,
    plan: StepPlan,
    table: ClusterTable,
    early: list[Partials],
    side: tuple[torch.cuda.Stream, torch.cuda.Stream] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
    """Admission before the attention, straight from the source (see the module's step 4).
    Returns (out, counts, an event recorded after admission: None without side streams)."""
    buffer = state.buffer
    assert buffer is not None
    st_k, st_v = state.steady_rows()
    planned = mark(side is not None)
    page_lo = plan.hit_pages()  # admission appends its pages after the hits'
    _, counts, copy_in = admit_direct(
        buffer, plan, table, plan.take, plan.fill, plan.count, copy=False, tick=False
    )
    admitted = mark(side is not None)  # the LRU clock's last reader is done
    hits = ExecView(
        st_k, st_v, pos, st_k[:, :0], st_v[:, :0], page_lo, buffer.keys, buffer.values,
        plan.take, plan.fill, page_lo,
    )  # fmt: skip
    reads = (q, plan.take, plan.fill, page_lo)
    no_est = plan.take[:, :0]
    early.append(on_side(
        side[1] if side else None, exact_partials, q, hits, z, no_est, sizes, vs, state.scale,
        HITS_TUNING, reads=reads, after=planned,
    ))  # fmt: skip
    none_k, none_v = st_k[:, :0], st_v[:, :0]  # every miss is in the page table (copy_in)
    view = ExecView(
        none_k, none_v, pos, none_k, none_v, plan.count, buffer.keys, buffer.values,
        plan.take, plan.fill, plan.count, page_lo, copy_in,
    )  # fmt: skip
    out, _ = decode_attention(q, view, z, plan.overflowed(), sizes, vs, state.scale, early=early)
    return out, counts, admitted


def _packed(
    state: LayerState,
    q: torch.Tensor,
    pos: torch.Tensor,
    z: torch.Tensor,
    sizes: torch.Tensor,
    vs: torch.Tensor,
    plan: StepPlan,
    table: ClusterTable | None,
    early: list[Partials],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Misses fetched packed, attended there, admitted after the attention."""
    buffer = state.buffer
    assert buffer is not None
    st_k, st_v = state.steady_rows()
    miss_k, miss_v, off = _fetch(state, plan.miss_ids, state.exec_tokens(), table)
    view = ExecView(
        st_k, st_v, pos, miss_k, miss_v, off[:, -1], buffer.keys, buffer.values,
        plan.take, plan.fill, plan.count,
    )  # fmt: skip
    out, _ = decode_attention(q, view, z, plan.overflowed(), sizes, vs, state.scale, early=early)
    return out, admit_step(buffer, plan, miss_k, miss_v, off)


def _fetch(
    state: LayerState, ids: torch.Tensor, width: int, table: ClusterTable | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's one batched fetch of `ids` [R, n] (-1: none), packed to `width` tokens:
    the table's copy kernel (device work) or the source's fetch."""
    r, n, d = state.rows, ids.shape[1], state.head_dim
    if table is not None:
        keys, values, offsets = table.fetch(ids.view(state.batch, state.kv_heads, n), width)
        return keys.view(r, -1, d), values.view(r, -1, d), offsets.view(r, n + 1)
    pending = state.misses.start(ids, width)
    return device_batch(pending.result(), r, n, state.device)


def _advance_clock(
    state: LayerState,
    n_ret: int,
    side: torch.cuda.Stream | None,
    admitted: torch.cuda.Event | None,
) -> None:
    """The wave buffer's LRU clock for the next step, on a side stream forked after admission
    (its last reader) so that it runs beside the attention; the current stream joins it (in
    stream order after the attention's launches: it holds back only what follows the step)."""
    buffer = state.buffer
    assert buffer is not None
    if side is None or admitted is None:
        buffer.advance_clock(n_ret)
        return
    side.wait_event(admitted)
    with torch.cuda.stream(side):
        buffer.advance_clock(n_ret)
        done = torch.cuda.Event()
        done.record(side)
    torch.cuda.current_stream().wait_event(done)


def _side_streams(device: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream] | None:
    """The two side streams of the step on CUDA (estimation; steady zone + hits), else None."""
    if device.type != "cuda":
        return None
    return _stream_of(device, 0), _stream_of(device, 1)


@cache
def _stream_of(device: torch.device, which: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)  # per device, shared by the layers (run in turn)
