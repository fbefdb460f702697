"""RetroInferLayer: the per-layer stateful object an engine drives (sequences in, decode steps).

A layer holds B batch slots; each is free or holds one sequence of its own length. `admit`
prefills sequences into free slots (their wave index built, its segments returned to upload),
`release` frees a slot, and a decode step runs every slot at once (a free slot's output is
unspecified). A step has three parts, public so that a whole model's step can be captured in
one CUDA graph (`inference_worker.model.retro_graph`):
- `begin_step()` (host): room in the steady zone, the wave buffer and the source's cluster
  table up to date;
- `step(q, k_new, v_new)` (device): each slot's new token written at its steady position,
  then the Triton step (`fast_step.py`) or the torch reference (`reference.py`), then the
  positions advanced; no host synchronisation on the Triton path, so it can be captured;
- `finish_step(counts, ...)` (host): each held slot's steady zone grows by its token and every
  update_tokens tokens an index update clusters the slot's oldest recent tokens.
`decode()` runs the three eagerly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F

from .config import RetroInferConfig, StepOptions
from .fast_step import fast_step
from .index import ClusterMetadata, IndexSegment, build_segment
from .kernels import kernels_available
from .kernels.availability import pick
from .kernels.bookkeeping import StepPlan
from .kernels.step_io import load_step, unload_step, write_token
from .mass import MassMeter, attention_mass
from .reference import reference_step
from .source import ClusterSource
from .state import LayerState
from .stats import COUNT_NAMES, StepStats
from .steady import SteadyZone
from .wave_buffer import WaveBuffer

log = logging.getLogger(__name__)

Selection = dict[str, torch.Tensor]
OnSegment = Callable[[list[Hashable], IndexSegment], None]


class RetroInferLayer:
    """RetroInfer attention state of one layer for B batch slots.

    `sequence_ids[b]` is slot b's sequence (None: free). prefill(keys, values) admits every
    slot at once (all held, equal lengths); admit() takes any free slots. Every segment
    (prefill or index update) is also passed to `on_segment(sequence ids of its rows,
    segment)` if given; it must be readable from `source` before the layer's next step.
    """

    def __init__(
        self,
        config: RetroInferConfig,
        layer: int,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        source: ClusterSource,
        sequence_ids: Sequence[Hashable | None],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        scale: float | None = None,
        on_segment: OnSegment | None = None,
        options: StepOptions | None = None,
    ) -> None:
        if num_q_heads % num_kv_heads:
            raise ValueError(
                f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )
        if not sequence_ids:
            raise ValueError("sequence_ids must list at least one batch slot, got 0")
        dev = torch.device(device)
        self.options = options or StepOptions()
        self.kernels = pick(self.options.kernels, torch.empty(0, device=dev))
        if self.kernels and config.defer_misses:
            raise ValueError(
                "defer_misses=True runs on the torch reference step only: build the layer with "
                "StepOptions(kernels=False) (the Triton step admits misses in their own step)"
            )
        self.config, self.layer, self.source = config, layer, source
        self.state = LayerState(
            config, layer, num_q_heads, num_kv_heads, head_dim, source, sequence_ids,
            dtype, dev, scale if scale is not None else 1.0 / math.sqrt(head_dim),
        )  # fmt: skip
        self._sdpa_scale = scale  # None: SDPA's own 1/sqrt(D), as full attention passes it
        self.on_segment = on_segment
        q_shape = (self.batch, num_q_heads, head_dim)
        self._q = torch.zeros(q_shape, dtype=dtype, device=dev)  # the step's query
        self.mass = MassMeter(self.batch, num_kv_heads)  # sampled retrieval quality per slot

    # --- read-only views of the state -------------------------------------------------------
    @property
    def sequence_ids(self) -> list[Hashable | None]:
        return list(self.state.sequence_ids)

    @property
    def batch(self) -> int:
        return self.state.batch

    @property
    def kv_heads(self) -> int:
        return self.state.kv_heads

    @property
    def head_dim(self) -> int:
        return self.state.head_dim

    @property
    def group(self) -> int:
        return self.state.group

    @property
    def dtype(self) -> torch.dtype:
        return self.state.dtype

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def scale(self) -> float:
        return self.state.scale

    @property
    def rows(self) -> int:
        return self.state.rows

    @property
    def num_clusters(self) -> int:
        """The index's width (the largest slot's cluster count)."""
        return self.state.num_clusters

    @property
    def meta(self) -> ClusterMetadata:
        return self.state.meta

    @property
    def steady(self) -> SteadyZone:
        return self.state.steady

    @property
    def buffer(self) -> WaveBuffer | None:
        """The wave buffer once built (at the first indexed step)."""
        return self.state.buffer

    @property
    def positions(self) -> torch.Tensor:
        """[R] int64 device positions: where each row's next token goes in its steady zone."""
        return self.state.pos

    @property
    def decode_steps(self) -> int:
        return self.state.decode_steps

    # --- sequences in and out ---------------------------------------------------------------
    def prefill(self, keys: torch.Tensor, values: torch.Tensor) -> list[IndexSegment]:
        """keys/values [B, Hkv, L, D] post-RoPE K/V of every slot's prompt (all held, none
        admitted yet). See admit()."""
        st = self.state
        if any(st.steady.lengths):
            raise RuntimeError(f"prefill() already called for layer {self.layer}")
        if any(s is None for s in st.sequence_ids):
            raise RuntimeError(f"prefill() needs every slot held (layer {self.layer}): use admit()")
        return self._fill(list(range(self.batch)), keys, values)

    def admit(
        self,
        slots: Sequence[int],
        sequence_ids: Sequence[Hashable],
        keys: torch.Tensor,  # [n, Hkv, L, D] post-RoPE prompt K/V, one row per slot
        values: torch.Tensor,
    ) -> list[IndexSegment]:
        """Sequences of one prompt length L into free slots. Builds their wave index when
        L >= sink + window + update_tokens; returns the segments to upload (0 or 1)."""
        st = self.state
        if len(slots) != len(sequence_ids) or len(set(slots)) != len(slots):
            raise ValueError(f"need distinct slots, one per sequence: {slots}, {sequence_ids}")
        for slot in slots:
            if not 0 <= slot < self.batch or st.sequence_ids[slot] is not None:
                raise ValueError(f"slot {slot} is not a free slot of [0, {self.batch})")
        for slot, seq in zip(slots, sequence_ids, strict=True):
            st.sequence_ids[slot] = seq
            self.mass.reset(slot)
        return self._fill(list(slots), keys, values)

    def grow(self, batch: int) -> None:
        """`batch` batch slots (more than now; the new ones free). The wave buffer is rebuilt
        empty at the next step."""
        self.state.grow(batch)
        self.mass.grow(batch)
        q = self._q
        self._q = torch.zeros(batch, *q.shape[1:], dtype=q.dtype, device=q.device)

    def counters(self, slot: int) -> dict[str, int]:
        """Cache hits, misses and evictions of the slot's sequence so far (one sync)."""
        return dict(zip(("hits", "misses", "evicted"), self.state.counters(slot), strict=True))

    def release(self, slot: int) -> None:
        """Slot `slot` is free (its index, steady zone and cache rows forgotten)."""
        st = self.state
        st.sequence_ids[slot] = None
        st.steady.clear(slot)
        st.meta.clear(slot)
        st.next_position[slot] = 0
        st.table_clusters[slot] = 0
        if st.table is not None:
            st.table.clear(slot)
        if st.buffer is not None:
            rows = st.slot_rows(slot)
            st.buffer.reset_rows(rows.start, rows.stop)
        st.sync_slot(slot)

    # --- decode -----------------------------------------------------------------------------
    def decode(
        self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, StepStats]:
        """One eager decode step. q [B, Hq, D]; k_new, v_new [B, Hkv, D] (post-RoPE).
        Returns (output [B, Hq, D] in q's dtype, stats)."""
        self._check_step(q, k_new, v_new)
        self.begin_step()
        st = self.state
        # one kernel: each row's new token into its steady zone, q into the step's buffer
        load_step(k_new, v_new, st.steady.keys, st.steady.values, st.pos, q, self._q)
        if self.num_clusters == 0:
            out = self._dense(self._q)
            st.pos.add_(st.active)
            widest = max(st.steady.lengths) + 1
            return out.reshape(q.shape).to(q.dtype, copy=True), self.finish_step(None, widest)
        qg = self._q.view(self.rows, self.group, self.head_dim)
        out, counts, exec_tokens, selection = self._run(qg)
        out, counts = unload_step(out, counts, q.dtype)
        stats = self.finish_step(counts, exec_tokens, selection)
        return out.view(q.shape), stats

    def begin_step(self) -> None:
        """Host side, before a step (and before capturing or replaying one): room in the
        steady zone for the new tokens; once indexed, the wave buffer and the cluster table."""
        st = self.state
        empty = [b for b in st.occupied() if st.steady.lengths[b] == 0]
        if empty:
            raise RuntimeError(
                f"layer {self.layer}: decode before prefill: slots {empty} hold sequences "
                f"{[st.sequence_ids[b] for b in empty]} with no prompt"
            )
        if max(st.steady.lengths) + 1 > st.steady.capacity:
            st.steady.resize(max(st.steady.lengths) + 1)
        if self.num_clusters:
            st.ensure_buffer()
            if self.kernels:
                st.ensure_table()

    def step(
        self,
        q: torch.Tensor,  # [R, G, D] in the layer's dtype
        k_new: torch.Tensor | None = None,  # [B, Hkv, D]: written at the positions first
        v_new: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The device work of an indexed step: (out [R, G, D] fp32, counts [7] int64, the
        execution buffer's tokens per row). Capturable where `capturable()` says so."""
        st = self.state
        if k_new is not None and v_new is not None:
            write_token(k_new, v_new, st.steady.keys, st.steady.values, st.pos)
        out, counts, exec_tokens, _ = self._run(q)
        return out, counts, exec_tokens

    def capturable(self) -> bool:
        """Whether `step` can be captured in a CUDA graph now: the Triton step on CUDA, an
        index, no recorded selections, and misses read in place from the source's device-
        visible memory (its cluster table) or fetched by pure device work."""
        if not (self.kernels and self.device.type == "cuda" and self.num_clusters > 0):
            return False
        if self.options.record_selection or self._mass_due():
            return False
        return self.state.ensure_table() is not None or self.source.graph_safe()

    def finish_step(
        self,
        counts: torch.Tensor | None,  # [7] int64 (None: a dense step)
        exec_tokens: int,
        selection: Selection | None = None,
    ) -> StepStats:
        """Host side, after a step: its statistics; each held slot's steady zone grows by its
        new token and every update_tokens tokens an index update runs (the segments in
        stats.new_segments)."""
        st = self.state
        stats = self.step_stats()
        stats.exec_tokens = exec_tokens
        if counts is not None:
            stats.counts = dict(zip(COUNT_NAMES, counts.unbind(), strict=True))
        stats.selection = selection
        for slot in st.occupied():
            st.steady.lengths[slot] += 1
        st.decode_steps += 1
        stats.new_segments = self._maybe_update()
        return stats

    def step_stats(self) -> StepStats:
        """The sizes part of this step's StepStats (before the step's host side ends)."""
        c = self.num_clusters
        return StepStats(
            num_clusters=c,
            retrieval_clusters=self.config.retrieval_clusters(c),
            estimation_clusters=self.config.estimation_clusters(c),
            steady_tokens=max(self.state.steady.lengths) + 1,
            dense=c == 0,
        )

    def graph_key(self) -> tuple[int, ...]:
        """What a captured step depends on: the index's width and the buffers it addresses."""
        st = self.state
        buffer = st.buffer
        assert buffer is not None, "begin_step builds the wave buffer"
        scratch = buffer._scratch.data_ptr() if buffer._scratch is not None else 0
        tab = st.table.tab_k.data_ptr() if st.table is not None else 0
        meta = st.meta.sizes.data_ptr()
        return (self.num_clusters, st.steady.keys.data_ptr(), buffer.stamp.data_ptr(),
                buffer.keys.data_ptr(), scratch, tab, meta)  # fmt: skip

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of what a step changes (to undo a warm-up run before a capture)."""
        assert self.state.buffer is not None
        return [*self.state.buffer.snapshot(), self.state.pos.clone()]

    def restore(self, saved: list[torch.Tensor]) -> None:
        assert self.state.buffer is not None
        self.state.buffer.restore(saved[:-1])
        self.state.pos.copy_(saved[-1])

    # --- internals --------------------------------------------------------------------------
    def _run(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, Selection | None]:
        """The step on the Triton kernels or the reference, then the positions advance:
        (out, counts, exec tokens, selection if recorded)."""
        st = self.state
        if self.options.query_transform is not None:
            q = self.options.query_transform(self.layer, q)
        measure = self._mass_due()
        pos = st.pos.clone() if measure else st.pos
        selection: Selection | None = None
        if not self.kernels:
            ref = reference_step(st, q, st.pos)
            shape = (self.batch, self.kv_heads, -1)
            selection = {
                "retrieved": ref.retrieved.view(shape),
                "estimated": ref.ranked.view(shape),
                "estimated_mask": ref.estimated_mask.view(shape),
            }
            out, counts, exec_tokens = ref.out, ref.counts, ref.exec_tokens
        else:
            res = fast_step(st, q, st.pos, st.table if st.table_ok else None)
            exec_tokens = st.steady.capacity + st.exec_tokens()
            exec_tokens += st.hit_page_width() * self.config.page_tokens
            out, counts = res.out, res.counts
            if self.options.record_selection or measure:
                selection = self._selection(res.plan, res.estimated_ids)
        st.pos.add_(st.active)
        if selection is not None and measure:
            self._measure(q, pos, selection)
        return out, counts, exec_tokens, selection if self.options.record_selection else None

    def _mass_due(self) -> bool:
        every = self.options.mass_every
        return every > 0 and self.state.decode_steps % every == 0

    def _measure(self, q: torch.Tensor, pos: torch.Tensor, selection: Selection) -> None:
        """Sample where this step's exact attention mass falls (mass.py)."""
        r = self.rows
        est = torch.where(selection["estimated_mask"], selection["estimated"], -1).view(r, -1)
        mass = attention_mass(self.state, q, pos, selection["retrieved"].view(r, -1), est)
        self.mass.add(mass, self.state.occupied())

    def _selection(self, plan: StepPlan, estimated_ids: torch.Tensor) -> Selection:
        """The fast step's clusters in the reference's format (the estimated zone in index
        order rather than rank order: the same set)."""
        c, r = self.num_clusters, self.rows
        sizes = self.meta.sizes.reshape(r, c)
        est_ok = (estimated_ids >= 0) & (sizes.gather(1, estimated_ids.clamp(min=0)) > 0)
        shape = (self.batch, self.kv_heads, -1)
        return {
            "retrieved": torch.where(plan.valid, plan.ret, -1).view(shape),
            "estimated": torch.cat([plan.ret, estimated_ids], dim=1).view(shape),
            "estimated_mask": torch.cat([plan.overflow, est_ok], dim=1).view(shape),
        }

    def _dense(self, q: torch.Tensor) -> torch.Tensor:
        """No index yet: the steady zone holds every token in order (the new one written at
        its position). Computed exactly as the model's FullAttentionBackend decodes (SDPA,
        GQA, boolean mask, the layer's dtype), so outputs are bit-identical to full
        attention's. Returns [B, Hq, 1, D]."""
        steady = self.state.steady
        n = max(steady.lengths) + 1  # tokens of the longest slot, the new one included
        keys, values = steady.keys[:, :, :n], steady.values[:, :, :n]  # [B, Hkv, n, D]
        lengths = torch.tensor(steady.lengths, device=self.device)  # [B]
        mask = torch.arange(n, device=self.device) <= lengths[:, None]  # [B, n]
        return F.scaled_dot_product_attention(
            q.unsqueeze(2), keys, values, attn_mask=mask[:, None, None], scale=self._sdpa_scale,
            enable_gqa=True,
        )  # fmt: skip

    def _fill(
        self, slots: list[int], keys: torch.Tensor, values: torch.Tensor
    ) -> list[IndexSegment]:
        """Slots' steady zones and index from their prompt K/V [n, Hkv, L, D]."""
        self._check_kv("keys", keys, len(slots), None)
        self._check_kv("values", values, len(slots), keys.shape[2])
        cfg, st, length = self.config, self.state, keys.shape[2]
        sink = min(cfg.sink_tokens, length)
        indexed = length >= cfg.index_threshold
        end = length - cfg.window_tokens if indexed else sink
        for i, slot in enumerate(slots):
            keep = (keys[i, :, :sink], keys[i, :, end:]), (values[i, :, :sink], values[i, :, end:])
            st.steady.fill(slot, sink, torch.cat(keep[0], 1), torch.cat(keep[1], 1))
            st.next_position[slot] = end
            st.forget(slot)
            st.meta.clear(slot)
            if st.buffer is not None:
                rows = st.slot_rows(slot)
                st.buffer.reset_rows(rows.start, rows.stop)
            st.table_clusters[slot] = 0
            st.sync_slot(slot)
        if not indexed:
            return []
        n_seg = cfg.num_segments(length)
        per_seg = cfg.num_clusters(end - sink, n_seg) // n_seg
        return [self._cluster(slots, keys[:, :, sink:end], values[:, :, sink:end], sink, n_seg,
                              per_seg)]  # fmt: skip

    def _maybe_update(self) -> list[tuple[list[Hashable], IndexSegment]]:
        """Index updates: each held slot whose recent window is full clusters its oldest
        update_tokens recent tokens; slots at the same point update in one batched call."""
        cfg, st = self.config, self.state
        due = [s for s in st.occupied()
               if st.steady.recent(s) >= cfg.window_tokens + cfg.update_tokens]  # fmt: skip
        groups: dict[tuple[int, int], list[int]] = {}
        for slot in due:
            groups.setdefault((st.meta.counts[slot], st.next_position[slot]), []).append(slot)
        out = []
        for (_, first), slots in groups.items():
            popped = [st.steady.pop_oldest_recent(s, cfg.update_tokens) for s in slots]
            keys = torch.stack([k for k, _ in popped])  # [n, Hkv, U, D]
            values = torch.stack([v for _, v in popped])
            segment = self._cluster(slots, keys, values, first, 1, cfg.update_clusters)
            for slot in slots:
                st.next_position[slot] += cfg.update_tokens
                st.sync_slot(slot)
            out.append(([st.sequence_ids[s] for s in slots], segment))
            log.debug("layer %d: index update of slots %s", self.layer, slots)
        return out  # type: ignore[return-value]

    def _cluster(
        self, slots: list[int], keys: torch.Tensor, values: torch.Tensor, first_position: int,
        n_seg: int, per_seg: int,
    ) -> IndexSegment:  # fmt: skip
        cfg, st = self.config, self.state
        segment = build_segment(
            keys, values, first_position, self.layer, st.meta.counts[slots[0]], n_seg, per_seg,
            cfg.kmeans_iterations, cfg.final_assign_chunk,
            use_triton=None if self.kernels and kernels_available(self.device) else False,
        )  # fmt: skip
        st.meta.append(slots, segment)
        if st.buffer is not None:
            st.buffer.grow(self.num_clusters)
        if self.on_segment is not None:
            self.on_segment([st.sequence_ids[s] for s in slots], segment)  # type: ignore[misc]
        return segment

    def _check_kv(self, name: str, t: torch.Tensor, n: int, length: int | None) -> None:
        want = (n, self.kv_heads, length if length is not None else t.shape[2], self.head_dim)
        if t.dim() != 4 or tuple(t.shape) != want:
            raise ValueError(
                f"{name} must have shape [B, Hkv, L, D] = {list(want)}, got {list(t.shape)}"
            )

    def _check_step(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        want_q = [self.batch, self.kv_heads * self.group, self.head_dim]
        want_kv = [self.batch, self.kv_heads, self.head_dim]
        if list(q.shape) != want_q:
            raise ValueError(f"q must have shape [B, Hq, D] = {want_q}, got {list(q.shape)}")
        for name, t in (("k_new", k_new), ("v_new", v_new)):
            if list(t.shape) != want_kv:
                raise ValueError(
                    f"{name} must have shape [B, Hkv, D] = {want_kv}, got {list(t.shape)}"
                )
