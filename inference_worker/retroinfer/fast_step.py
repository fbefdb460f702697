"""The decode step of RetroInferLayer on the Triton kernels (CUDA).

Same semantics and statistics as `RetroInferLayer._tripartite` (the torch reference), with
about a third of the kernels and no materialised execution buffer: ranking + selection is two
kernels, the steady zone, misses, cache hits and the estimation zone are attended by one split-K
kernel plus one combine. With direct admission (a source with a cluster table), admitted misses
move once, source -> cache page, written by the decode kernel as it attends them, and misses
the cache cannot admit are attended where they lie in the source (device-memory sources); for
pinned host sources a copy kernel admits, and misses left over are fetched packed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import torch

from .kernels import RankSelection, decode_attention, rank_select
from .kernels.availability import pick
from .kernels.bookkeeping import (
    StepPlan,
    admit_direct,
    admit_step,
    fusable,
    plan_admit,
    plan_step,
)
from .kernels.decode_attention import (
    CopyIn,
    DecodeTuning,
    ExecView,
    current_tuning,
    exact_partials,
)
from .kernels.estimate import estimate_async
from .kernels.partials import Partials, mark, on_side
from .misses import device_batch

if TYPE_CHECKING:
    from .kernels.cluster_table import ClusterTable
    from .layer import RetroInferLayer
    from .wave_buffer import WaveBuffer

# Side-stream work is forked where its inputs are ready (estimation: after the selection;
# cache hits: after the plan) but may be launched later, so that main-stream kernels launched
# before it are dispatched before its many programs fill the GPU. Launch points (estimation,
# cache hits) per mode; "after next" is the default, the others profiler variants (slower on
# the H100: docs/retro_kernels.md, fifth and sixth passes). A point ending in "*" forks from
# the launch point itself: the side work waits for everything before it on the main stream
# (so that the plan and admission, latency bound, run without it beside them).
SIDE_LAUNCHES = {
    "at fork": ("select", "plan"),
    "hits at plan": ("plan", "plan"),
    "after next": ("plan", "admission"),  # after the plan kernel; after admission
    "estimation after admission": ("admission*", "admission"),
    "both after admission": ("admission*", "admission*"),
}
SIDE_LAUNCH = "after next"
# Launch shape of the side pass over the steady zone and the cache hits: each row's hit pages
# shared by 2 programs leave most of the GPU to the main stream's admission and decode, which
# the pass overlaps. (H100, 128K x 16, correlated queries: one 2048-token split per row,
# 0.348 vs 0.376 ms per step with 1024-token splits, results/step_profile_cuda_v11.json.)
HITS_TUNING = DecodeTuning(page_splits=2)
# Variant (profiler): the estimation zone attended by the hits pass (one side kernel, one set
# of partials fewer) instead of by its own kernel on side stream 0. No gain on the H100 at
# 128K x 16: 0.357 vs 0.336-0.348 ms correlated, 0.410 vs 0.389-0.411 random
# (results/step_profile_cuda_v17.json): the estimation then starts after admission.
EST_WITH_HITS = False
# Clusters per row above which misses are fetched packed and admitted after the attention
# instead of straight from the source: the direct path's page table lists every miss page
# (~5,300 per row at 512K), and its one-program-per-row plan and admission grow with it.
# H100, ms per layer-step, direct vs packed (results/attention_cuda_v16*.json): 512K x 1
# 0.644 vs 0.490, 512K x 4 0.785 vs 0.673 (correlated); 128K x 16 (8,192 clusters) 0.337 vs
# 0.395 and 32K x 16 0.156 vs 0.194 favour the direct path.
DIRECT_MAX_CLUSTERS = 16384


# Variant (profiler; tested): direct admission from a device-memory source off the step's
# chain. The plan lists every miss in place (attended where it lies in the source, like a miss
# the cache cannot admit) and admission plus a copy kernel run on side stream 2 beside the
# attention. Slower on the H100 at 128K x 16: 0.348 vs 0.327 ms correlated, 0.491 vs 0.422
# random (results/attention_cuda_v25_128k16.json vs _v22): the listing costs the plan ~9 us,
# the copy kernel re-reads every admitted miss while the attention runs (49 us correlated,
# 119 us random) and delays the combine. Default: admission on the chain, the decode kernel
# filling the admitted pages as it attends them (copy_in), each miss read once.
ADMIT_BESIDE = False
# Variant (tested; off): rows split into this many micro-batches, each a chain of kernels on
# its own stream, started when the previous one's centroid scan ends, so that the latency-bound
# selection, plan and admission (one program per row) of one micro-batch overlap the
# bandwidth-bound scan and attention of the next. Used where every miss is attended from a
# device-memory source (direct admission, fused copy) at fixed widths (captured steps), with
# at least MICRO_MIN_ROWS rows apiece. Slower on the H100 at 128K x 16 (2 micro-batches: 0.343-
# 0.365 vs 0.325-0.327 ms correlated, 0.405-0.408 vs 0.380 random; 3 and 4 slower still;
# results/step_profile_cuda_v23.json, _v24.json): sharing the SMs with the other micro-batch's
# bandwidth-bound kernels slows the latency-bound ones 1.5-2.7x (selection 43 -> 65-117 us in
# the _v24 timeline), and each micro-batch pays the decode's and combine's fixed costs.
MICRO_BATCHES = 1
MICRO_MIN_ROWS = 32
MICRO_STAGGER = True  # False: all micro-batches start at once (profiler variant)
# Micro-batch i's chain on a stream of priority rank i (0: the device's greatest priority), so
# that an earlier micro-batch's latency-bound kernels are dispatched before a later one's scan
# blocks; False: default-priority streams (profiler variant).
MICRO_PRIORITY = True
# Variant (profiler; tested): the plan and the direct admission in one kernel (`plan_admit`:
# one program per row runs both) where the step attends every miss through the page table
# (device-memory source, fused copy) at fixed widths (captured steps; eager steps cut their
# page table between the two). Slower on the H100 at 128K x 16: the fused kernel took 65-66 us
# against 28 + 31 us, and the hits pass, which ends the step, then starts after it (227 us into
# the step instead of ~198, where it overlapped admission): results/step_profile_cuda_v30.json.
PLAN_ADMIT = False


@dataclass(slots=True)
class _Rows:
    """A step's per-row inputs, for all the layer's rows or a contiguous range of them."""

    qg: torch.Tensor  # [R, G, D]
    centroids: torch.Tensor  # [R, C, D]
    sizes: torch.Tensor  # [R, C] int64
    value_sums: torch.Tensor  # [R, C, D]
    steady_k: torch.Tensor  # [R, CAP, D]
    steady_v: torch.Tensor  # [R, CAP, D]
    buffer: WaveBuffer
    table: ClusterTable | None  # the source's cluster table (direct admission), else None
    centroid_scale: torch.Tensor | None = None  # [R, C] fp32: int8 centroids' scales

    @classmethod
    def of_layer(cls, layer: RetroInferLayer, q: torch.Tensor) -> _Rows:
        steady = layer.steady
        assert steady is not None
        c, r, d = layer.num_clusters, layer.rows, layer.head_dim
        cap = steady.keys.shape[2]
        meta = layer.meta
        cs = meta.centroid_scale.reshape(r, c) if meta.centroid_scale is not None else None
        return cls(
            q.reshape(r, layer.group, d), meta.centroids.reshape(r, c, d),
            meta.sizes.reshape(r, c), meta.value_sums.reshape(r, c, d),
            steady.keys.view(r, cap, d), steady.values.view(r, cap, d), layer._buffer(c),
            _direct_table(layer), cs,
        )  # fmt: skip

    @property
    def count(self) -> int:
        return self.qg.shape[0]

    def part(self, lo: int, hi: int) -> _Rows:
        """Rows [lo, hi) of these rows."""
        table = self.table.row_range(lo, hi) if self.table is not None else None
        return _Rows(
            self.qg[lo:hi], self.centroids[lo:hi], self.sizes[lo:hi],
            self.value_sums[lo:hi], self.steady_k[lo:hi], self.steady_v[lo:hi],
            self.buffer.row_range(lo, hi), table,
            self.centroid_scale[lo:hi] if self.centroid_scale is not None else None,
        )  # fmt: skip


@dataclass(slots=True)
class _Done:
    """What one chain of a step left: its output, counts and when admission was done."""

    out: torch.Tensor  # [R, G, D] fp32
    counts: torch.Tensor  # [7] int64
    width: int  # execution-buffer tokens (capacity)
    direct: bool  # admitted before the attention (the caller advances the LRU clock)
    admitted: torch.cuda.Event | None  # direct, with side streams: after admission


def fast_tripartite(
    layer: RetroInferLayer,
    q: torch.Tensor,
    k_new: torch.Tensor | None,
    v_new: torch.Tensor | None,
    pos: torch.Tensor,
    widths: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out [R, G, D] fp32, counts [7], exec marker [T]) of one step. k_new / v_new None: the
    new token is already in the steady zone at pos."""
    steady = layer.steady
    assert steady is not None
    if k_new is not None and v_new is not None:  # else decode()'s load_step wrote it
        steady.append_at(k_new, v_new, pos)  # in order: one small kernel before the ranking
    rows = _Rows.of_layer(layer, q)
    parts = micro_batches(rows.count, widths is not None and _fused_direct(layer, rows))
    if len(parts) > 1:
        assert widths is not None
        return _staggered(layer, [rows.part(lo, hi) for lo, hi in parts], pos, widths)
    done = _chain(layer, rows, pos, widths, 0)
    if done.direct:  # the LRU clock, beside the attention
        _advance_clock(layer, rows.buffer, [done.admitted])
    return done.out, done.counts, torch.empty(done.width, device="meta")


def micro_batches(rows: int, split: bool = True) -> list[tuple[int, int]]:
    """The row ranges of a step's micro-batches (one range: not split). split False: the step
    cannot be split (see _fused_direct, fixed widths)."""
    k = min(MICRO_BATCHES, rows // MICRO_MIN_ROWS)
    if k < 2 or not split:
        return [(0, rows)]
    bounds = [rows * i // k for i in range(k + 1)]
    return list(itertools.pairwise(bounds))


def _fused_direct(layer: RetroInferLayer, rows: _Rows) -> bool:
    """Whether the step admits straight from a source in the layer's memory with the fused
    kernels (nothing is fetched for the whole layer at once)."""
    n_ret = layer.config.retrieval_clusters(layer.num_clusters)
    table, buffer = rows.table, rows.buffer
    return (
        table is not None
        and layer.fused_bookkeeping
        and layer.fused_copy
        and table.base_k.device == buffer.keys.device
        and fusable(buffer, n_ret)
    )


def _staggered(
    layer: RetroInferLayer, parts: list[_Rows], pos: torch.Tensor, widths: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chain of kernels per micro-batch (on its own stream; without side streams, one
    after the other), the counts summed into one tensor, the outputs joined."""
    totals = torch.zeros(7, dtype=torch.int64, device=layer.device)
    if _side_stream(layer, 0, 0) is None:
        done = [_chain(layer, rows, pos, widths, i, totals) for i, rows in enumerate(parts)]
    else:
        done = _on_streams(layer, parts, pos, widths, totals)
    assert all(d.direct for d in done), "micro-batches admit directly (fused plan, admission)"
    _advance_clock(layer, parts[0].buffer, [d.admitted for d in done])
    out = torch.cat([d.out for d in done])  # [R, G, D]
    return out, totals, torch.empty(done[0].width, device="meta")


def _on_streams(
    layer: RetroInferLayer,
    parts: list[_Rows],
    pos: torch.Tensor,
    widths: tuple[int, int],
    totals: torch.Tensor,
) -> list[_Done]:
    """Micro-batch i on stream i (MICRO_PRIORITY: of priority rank i), forked when
    micro-batch i - 1's centroid scan is done (MICRO_STAGGER) or at once; the current stream
    joins them all."""
    main = torch.cuda.current_stream()
    start = _event()
    fork: list[torch.cuda.Event] = [start]
    done: list[_Done] = []
    ends: list[torch.cuda.Event] = []
    for i, rows in enumerate(parts):
        stream = _stream_of(layer.device, ("micro", i), _priority(i) if MICRO_PRIORITY else 0)
        stream.wait_event(fork[-1] if MICRO_STAGGER else start)
        with torch.cuda.stream(stream):
            scanned = (lambda: fork.append(_event())) if MICRO_STAGGER else None
            done.append(_chain(layer, rows, pos, widths, i, totals, scanned))
            ends.append(_event())
        if not torch.cuda.is_current_stream_capturing():
            done[-1].out.record_stream(main)  # made on `stream`, read on main
    for end in ends:
        main.wait_event(end)
    return done


def _priority(rank: int) -> int:
    """The stream priority `rank` steps below the device's greatest (lower is higher)."""
    least, greatest = torch._C._CudaStreamBase.priority_range()  # type: ignore[call-arg]
    return min(greatest + rank, least)


def _chain(
    layer: RetroInferLayer,
    rows: _Rows,
    pos: torch.Tensor,
    widths: tuple[int, int] | None,
    chain: int,  # which micro-batch (its side streams)
    totals: torch.Tensor | None = None,  # [7] shared counts (micro-batches)
    after_scan: Callable[[], None] | None = None,
) -> _Done:
    """The step's kernels for `rows` on the current stream (and its side streams)."""
    cfg, c = layer.config, layer.num_clusters
    r, qg, sizes, vs, buffer = rows.count, rows.qg, rows.sizes, rows.value_sums, rows.buffer
    n_ret, n_est = cfg.retrieval_clusters(c), cfg.estimation_clusters(c)
    # retrieved unsorted (plan_step ranks it by retrieved_score)
    sel = rank_select(
        qg, rows.centroids, sizes, layer.scale, n_ret, n_est, sort=False, after_scan=after_scan,
        centroid_scale=rows.centroid_scale,
    )  # fmt: skip
    tuning = current_tuning()
    early: list[Partials] = []

    side_est = _side_stream(layer, 0, chain)
    est_at, hits_at = SIDE_LAUNCHES[SIDE_LAUNCH]
    selected = mark(side_est is not None and not est_at.endswith("*"))  # None: fork at launch
    est_at = est_at.rstrip("*")
    side = _Launches()

    def fork_estimation() -> None:  # the estimation zone, on side stream 0
        early.append(estimate_async(
            sel.z, sel.estimated_ids, sizes, vs, side_est, True, tuning.est_block,
            tuning.prefetch, selected,
        ))  # fmt: skip

    table = rows.table
    est_in_hits = EST_WITH_HITS and table is not None
    if not est_in_hits:
        side.at(est_at, fork_estimation)
    side.reached("select")
    cap_tokens = cfg.exec_buffer_clusters(c) * cfg.cluster_size
    # a source in the layer's memory: the decode kernel copies admitted misses into their
    # pages and attends the misses not admitted in place; pinned host: a copy kernel + a fetch
    fuse = table is not None and layer.fused_copy and table.base_k.device == buffer.keys.device
    plan_width = widths[1] if widths is not None else buffer.pages + 1
    if fuse:  # the page table lists every miss page too (eager: cut to the step's need)
        plan_width = cap_tokens // cfg.page_tokens + n_ret
    one_kernel = fuse and PLAN_ADMIT and not ADMIT_BESIDE and widths is not None
    plan, admitted_early = _plan(
        layer, buffer, sel, sizes, (cap_tokens, plan_width), totals,
        table if fuse and ADMIT_BESIDE else None, table if one_kernel else None,
    )  # fmt: skip
    side.reached("plan")
    take, fill, count = plan.take, plan.fill, plan.count
    table = table if plan.fused else None
    if est_in_hits and table is None:  # no hits pass after all: the estimation on its own
        est_in_hits = False
        fork_estimation()
    measured = widths is None  # eager: the page table is cut to the step's need
    if widths is None:
        pages = buffer._pages_of(plan.ret_sizes)
        miss_tokens = torch.where(plan.miss, plan.ret_sizes, 0).sum(1).max()
        hit_pages = torch.where(plan.hit, pages, 0).sum(1).max()
        listed = torch.where(plan.hit | plan.miss, pages, 0).sum(1).max()  # + admitted pages
        need = torch.stack([miss_tokens, hit_pages, listed]).tolist()  # the step's one host sync
        widths = (-(-max(need[0], 1) // 64) * 64, max(need[1], 1))
        listed_w = max(need[2], 1) if table is not None else widths[1]
        take, fill = take[:, :listed_w].contiguous(), fill[:, :listed_w].contiguous()
        count = count.clamp(max=listed_w)
    st_k, st_v = rows.steady_k, rows.steady_v
    cap = st_k.shape[1]
    fetch_ids, counts, copy_in = plan.miss_ids, None, None
    page_lo: torch.Tensor | None = None
    admitted: torch.cuda.Event | None = None
    beside = table is not None and plan.miss_off_k is not None
    if table is not None:  # admitted misses: source -> cache pages, attended there
        # the hit pages (admission appends its pages after them); eager: the cut table's
        page_lo = count.clone() if measured and not beside else plan.hit_pages()
        hits = ExecView(st_k, st_v, pos, st_k[:, :0], st_v[:, :0], page_lo, buffer.keys,
                        buffer.values, take, fill, page_lo)  # fmt: skip
        planned = mark(side_est is not None and not hits_at.endswith("*"))
        hits_at = hits_at.rstrip("*")

        est = sel.estimated_ids if est_in_hits else None

        def attend_hits(view: ExecView = hits, ev: torch.cuda.Event | None = planned) -> None:
            early.append(_attend_hits(layer, chain, qg, view, sel.z, sizes, vs, ev, est))

        side.at(hits_at, attend_hits)
        if beside:  # every miss attended in place; admission copies beside the attention
            assert plan.miss_off_k is not None and plan.miss_off_v is not None
            copy_in = CopyIn(table.base_k, table.base_v, plan.miss_off_k, plan.miss_off_v)
            counts, admitted = _admit_beside(layer, chain, plan, table, buffer, planned)
        else:
            fetch_ids, counts, runs = admitted_early or admit_direct(
                buffer, plan, table, take, fill, count, not fuse, tick=False
            )
            copy_in = runs if fuse else None
            admitted = mark(side_est is not None)  # the clock's last reader is done
        st_k, st_v = st_k[:, :0], st_v[:, :0]  # the steady zone went with the hits
    side.reached("admission")
    if copy_in is not None:  # every miss is in the page table: nothing to fetch
        miss_k, miss_v, miss_len = st_k, st_v, count  # width 0: not attended
    else:  # the source fetches for every row of the layer
        assert r == layer.rows, "packed misses are fetched for the whole layer"
        pending = layer.misses.start(fetch_ids, widths[0])  # a thread for host-blocking sources
        miss_k, miss_v, miss_off = device_batch(pending.result(), r, n_ret, layer.device)
        miss_len = miss_off[:, -1]
    view = ExecView(
        st_k, st_v, pos, miss_k, miss_v, miss_len,
        buffer.keys, buffer.values, take, fill, count, page_lo, copy_in,
    )  # fmt: skip
    # estimated here: the overflowed retrieval clusters (the estimation zone is in `early`)
    out, _ = decode_attention(
        qg, view, sel.z, plan.overflowed(), sizes, vs, layer.scale, early=early
    )
    if counts is None:
        counts = admit_step(buffer, plan, miss_k, miss_v, miss_off)
    width = cap + widths[0] + widths[1] * buffer.page_tokens
    return _Done(out, counts, width, table is not None, admitted)


def _plan(
    layer: RetroInferLayer,
    buffer: WaveBuffer,
    sel: RankSelection,
    sizes: torch.Tensor,  # [R, C]
    cap_width: tuple[int, int],  # execution-buffer tokens, page-table width
    totals: torch.Tensor | None,
    in_place: ClusterTable | None,  # plan_step's in_place
    admit: ClusterTable | None,  # plan and admit in one kernel (plan_admit) where it can
) -> tuple[StepPlan, tuple[torch.Tensor, torch.Tensor, CopyIn] | None]:
    """The step's plan, and with `admit` (if the fused kernels run here) its direct admission
    too, as admit_direct(copy=False, tick=False) returns it."""
    cap, width = cap_width
    fused = layer.fused_bookkeeping and fusable(buffer, sel.retrieved.shape[1])
    if admit is not None and fused and pick(None, sel.retrieved):
        plan, rest, counts, copy_in = plan_admit(
            buffer, sel.retrieved, sizes, cap, width, admit, sel.retrieved_score, totals
        )
        return plan, (rest, counts, copy_in)
    use = None if layer.fused_bookkeeping else False
    plan = plan_step(
        buffer, sel.retrieved, sizes, cap, width, use, sel.retrieved_score, totals, in_place
    )
    return plan, None


def _admit_beside(
    layer: RetroInferLayer,
    chain: int,
    plan: StepPlan,  # planned with every miss listed in place
    table: ClusterTable,
    buffer: WaveBuffer,
    planned: torch.cuda.Event | None,  # recorded after the plan
) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Admission with its copy kernel on side stream 2, forked after the plan: it evicts and
    fills pages no attention of the step reads (the plan stamped the hits most recent; misses
    are attended from the source) and leaves the page table alone. Returns (counts [7], an
    event after it; None: it ran in order here)."""
    side = _side_stream(layer, 2, chain)
    args = (buffer, plan, table, plan.take, plan.fill, plan.count)
    if side is None or planned is None:
        return admit_direct(*args, copy=True, tick=False, table_writes=False)[1], None
    side.wait_event(planned)
    with torch.cuda.stream(side):
        counts = admit_direct(*args, copy=True, tick=False, table_writes=False)[1]
        done = _event()
    if not torch.cuda.is_current_stream_capturing():  # eager: the allocator's stream rules
        for t in (plan.miss_ids, plan.miss_rank, plan.miss_sizes, plan.take, plan.fill):
            if t is not None:
                t.record_stream(side)  # made on main, read on side
    return counts, done


def _event() -> torch.cuda.Event:
    """An event recorded on the current stream now."""
    event = torch.cuda.Event()
    event.record()
    return event


class _Launches:
    """Side computations launched at named points of the step (at once if already passed)."""

    def __init__(self) -> None:
        self.due: dict[str, list[Callable[[], None]]] = {}
        self.passed: set[str] = set()

    def at(self, point: str, fn: Callable[[], None]) -> None:
        if point in self.passed:
            fn()
        else:
            self.due.setdefault(point, []).append(fn)

    def reached(self, point: str) -> None:
        self.passed.add(point)
        for fn in self.due.pop(point, []):
            fn()


def _advance_clock(
    layer: RetroInferLayer, buffer: WaveBuffer, after: list[torch.cuda.Event | None]
) -> None:
    """The wave buffer's LRU clock for the next step (n_ret + 1 on), on side stream 0 forked
    after every admission of the step (the clock's last readers), so that it runs beside the
    attention instead of after it. The current stream joins it at once: in stream order that
    is after the attention's launches, so it holds back only what follows the step."""
    n = layer.config.retrieval_clusters(layer.num_clusters)
    side = _side_stream(layer, 0, 0)
    events = [e for e in after if e is not None]
    if side is None or not events:
        buffer.advance_clock(n)
        return
    for event in events:
        side.wait_event(event)
    with torch.cuda.stream(side):
        buffer.advance_clock(n)
        done = torch.cuda.Event()
        done.record(side)
    torch.cuda.current_stream().wait_event(done)


def _attend_hits(
    layer: RetroInferLayer,
    chain: int,  # which micro-batch (its side stream)
    qg: torch.Tensor,  # [R, G, D]
    view: ExecView,  # the steady zone and the hit pages (hit_pages: a copy of the plan's count)
    z: torch.Tensor,
    sizes: torch.Tensor,
    vs: torch.Tensor,
    planned: torch.cuda.Event | None,  # recorded after the plan
    est: torch.Tensor | None = None,  # [R, n_est] estimation-zone ids to attend here too
) -> Partials:
    """Partials of the steady zone and the cache hits (and `est`'s estimation zone), on a
    second side stream, forked after the plan: they run while admission evicts and copies
    (never a hit page: the plan stamped the hits most recent) and appends its pages to the page
    table after the hits' (which the plan's hit-page count, view.hit_pages, hides)."""
    est = view.take[:, :0] if est is None else est
    args = (qg, view, z, est, sizes, vs, layer.scale, HITS_TUNING)
    reads = (qg, view.take, view.fill, view.hit_pages, est)
    return on_side(_side_stream(layer, 1, chain), exact_partials, *args, reads=reads, after=planned)


def _side_stream(layer: RetroInferLayer, which: int, chain: int) -> torch.cuda.Stream | None:
    """Side stream `which` (0: estimation zone, 1: cache hits) of micro-batch `chain`; None:
    in order on the current stream (overlap off, or not CUDA)."""
    if not layer.overlap_streams or layer.device.type != "cuda":
        return None
    return _stream_of(layer.device, which if chain == 0 else (chain, which))


@cache
def _stream_of(
    device: torch.device, key: int | tuple[object, ...], priority: int = 0
) -> torch.cuda.Stream:
    # per device and key, shared by the layers (run in turn)
    return torch.cuda.Stream(device, priority=priority)


def _direct_table(layer: RetroInferLayer) -> ClusterTable | None:
    """The source's cluster table when misses can be admitted straight from the source (not
    above DIRECT_MAX_CLUSTERS clusters per row)."""
    table_of = getattr(layer.source, "cluster_table", None)
    if not layer.direct_admission or table_of is None:
        return None
    if layer.num_clusters > DIRECT_MAX_CLUSTERS:
        return None
    table: ClusterTable | None = table_of(layer.layer, layer.sequence_ids)
    return table
