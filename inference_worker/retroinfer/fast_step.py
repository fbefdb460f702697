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

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

import torch

from .kernels import decode_attention, rank_select
from .kernels.bookkeeping import admit_direct, admit_step, plan_step
from .kernels.decode_attention import DecodeTuning, ExecView, current_tuning, exact_partials
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
# the H100: docs/retro_kernels.md, fifth and sixth passes).
SIDE_LAUNCHES = {
    "at fork": ("select", "plan"),
    "hits at plan": ("plan", "plan"),
    "after next": ("plan", "admission"),  # after the plan kernel; after admission
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
    cfg, c, r, d = layer.config, layer.num_clusters, layer.rows, layer.head_dim
    qg = q.reshape(r, layer.group, d)  # [R, G, D]
    n_ret, n_est = cfg.retrieval_clusters(c), cfg.estimation_clusters(c)
    sizes = layer.meta.sizes.reshape(r, c)
    sel = rank_select(
        qg, layer.meta.centroids.reshape(r, c, d), sizes, layer.scale, n_ret, n_est, sort=False
    )  # retrieved unsorted (plan_step ranks it by retrieved_score)
    vs = layer.meta.value_sums.reshape(r, c, d)
    tuning = current_tuning()
    early: list[Partials] = []

    side_est = _side_stream(layer, 0)
    selected = mark(side_est is not None)
    est_at, hits_at = SIDE_LAUNCHES[SIDE_LAUNCH]
    side = _Launches()

    def fork_estimation() -> None:  # the estimation zone, on side stream 0
        early.append(estimate_async(
            sel.z, sel.estimated_ids, sizes, vs, side_est, True, tuning.est_block,
            tuning.prefetch, selected,
        ))  # fmt: skip

    buffer = layer._buffer(c)
    table = _direct_table(layer)
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
    use = None if layer.fused_bookkeeping else False
    plan = plan_step(buffer, sel.retrieved, sizes, cap_tokens, plan_width, use, sel.retrieved_score)
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
    cap = steady.keys.shape[2]
    st_k, st_v = steady.keys.view(r, cap, d), steady.values.view(r, cap, d)
    fetch_ids, counts, copy_in = plan.miss_ids, None, None
    page_lo: torch.Tensor | None = None
    admitted: torch.cuda.Event | None = None
    if table is not None:  # admitted misses: source -> cache pages, attended there
        # the hit pages (admission appends its pages after them); eager: the cut table's
        page_lo = count.clone() if measured else plan.hit_pages()
        hits = ExecView(st_k, st_v, pos, st_k[:, :0], st_v[:, :0], page_lo, buffer.keys,
                        buffer.values, take, fill, page_lo)  # fmt: skip
        planned = mark(side_est is not None)

        est = sel.estimated_ids if est_in_hits else None

        def attend_hits(view: ExecView = hits, ev: torch.cuda.Event | None = planned) -> None:
            early.append(_attend_hits(layer, qg, view, sel.z, sizes, vs, ev, est))

        side.at(hits_at, attend_hits)
        fetch_ids, counts, runs = admit_direct(
            buffer, plan, table, take, fill, count, not fuse, tick=False
        )
        copy_in = runs if fuse else None
        admitted = mark(side_est is not None)  # the clock's last reader of the step is done
        st_k, st_v = st_k[:, :0], st_v[:, :0]  # the steady zone went with the hits
    side.reached("admission")
    if copy_in is not None:  # every miss is in the page table: nothing to fetch
        miss_k, miss_v, miss_len = st_k, st_v, count  # width 0: not attended
    else:
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
    if table is not None:  # the LRU clock: beside the attention, off its chain
        _advance_clock(layer, buffer, n_ret, admitted)
    if counts is None:
        counts = admit_step(buffer, plan, miss_k, miss_v, miss_off)
    width = cap + widths[0] + widths[1] * buffer.page_tokens
    return out, counts, torch.empty(width, device="meta")


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
    layer: RetroInferLayer, buffer: WaveBuffer, n: int, after: torch.cuda.Event | None
) -> None:
    """The wave buffer's LRU clock for the next step, on side stream 0 forked after admission
    (the step's last reader of the clock), so that it runs beside the attention instead of
    after it. The current stream joins it at once: in stream order that is after the
    attention's launches, so it holds back only what follows the step."""
    side = _side_stream(layer, 0)
    if side is None or after is None:
        buffer.advance_clock(n)
        return
    side.wait_event(after)
    with torch.cuda.stream(side):
        buffer.advance_clock(n)
        done = torch.cuda.Event()
        done.record(side)
    torch.cuda.current_stream().wait_event(done)


def _attend_hits(
    layer: RetroInferLayer,
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
    return on_side(_side_stream(layer, 1), exact_partials, *args, reads=reads, after=planned)


def _side_stream(layer: RetroInferLayer, which: int) -> torch.cuda.Stream | None:
    """Side stream `which` (0: estimation zone, 1: cache hits); None: in order on the current
    stream (overlap off, or not CUDA)."""
    if not layer.overlap_streams or layer.device.type != "cuda":
        return None
    return _stream_of(layer.device, which)


@cache
def _stream_of(device: torch.device, which: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)  # per device, shared by the layers (run in turn)


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
