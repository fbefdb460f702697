"""RetroInferLayer: the per-layer stateful object an engine drives (prefill, then decode steps).

A decode step has three parts, public so that a whole model's step can be captured in one CUDA
graph (`inference_worker.model.retro_graph`):
- `begin_step()` (host): room in the steady zone, the wave buffer built;
- `step(q, pos, k_new, v_new)` (device): the new token written at the steady position `pos`,
  then the Triton step (`fast_step.py`) or the torch reference (`reference.py`); no host
  synchronisation on the Triton path, so it can be captured;
- `finish_step(counts, ...)` (host): the steady zone grows by the new token and every
  update_tokens tokens an index update clusters the oldest recent tokens.
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
from .reference import reference_step
from .source import ClusterSource
from .state import LayerState
from .stats import COUNT_NAMES, StepStats
from .steady import SteadyZone
from .wave_buffer import WaveBuffer

log = logging.getLogger(__name__)

Selection = dict[str, torch.Tensor]


class RetroInferLayer:
    """RetroInfer attention state of one layer for B equal-length sequences.

    prefill(keys, values) builds the wave index and returns the cluster-major segments to
    upload; decode(q, k_new, v_new) returns the attention output and per-step statistics. Every
    segment (prefill or index update) is also passed to `on_segment` if given; it must be
    fetchable from `source` before the next decode call of this layer.
    """

    def __init__(
        self,
        config: RetroInferConfig,
        layer: int,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        source: ClusterSource,
        sequence_ids: Sequence[Hashable],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        scale: float | None = None,
        on_segment: Callable[[IndexSegment], None] | None = None,
        options: StepOptions | None = None,
    ) -> None:
        if num_q_heads % num_kv_heads:
            raise ValueError(
                f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )
        dev = torch.device(device)
        self.options = options or StepOptions()
        self.kernels = pick(self.options.kernels, torch.empty(0, device=dev))
        if self.kernels and config.defer_misses:
            raise ValueError(
                "defer_misses=True runs on the torch reference step only: build the layer with "
                "StepOptions(kernels=False) (the Triton step admits misses in their own step)"
            )
        self.config, self.layer, self.source = config, layer, source
        self.sequence_ids = list(sequence_ids)
        self.state = LayerState(
            config, layer, num_q_heads, num_kv_heads, head_dim, source, self.sequence_ids,
            dtype, dev, scale if scale is not None else 1.0 / math.sqrt(head_dim),
        )  # fmt: skip
        self._sdpa_scale = scale  # None: SDPA's own 1/sqrt(D), as full attention passes it
        self.on_segment = on_segment
        self._pos = torch.zeros(1, dtype=torch.int64, device=dev)  # the new token's position
        self._q = torch.zeros(
            len(self.sequence_ids), num_q_heads, head_dim, dtype=dtype, device=dev
        )

    # --- read-only views of the state -------------------------------------------------------
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
        return self.state.num_clusters

    @property
    def meta(self) -> ClusterMetadata:
        return self.state.meta

    @property
    def steady(self) -> SteadyZone | None:
        return self.state.steady

    @property
    def buffer(self) -> WaveBuffer | None:
        """The wave buffer once built (at the first indexed step)."""
        return self.state._buffer

    @property
    def decode_steps(self) -> int:
        return self.state.decode_steps

    # --- prefill ----------------------------------------------------------------------------
    def prefill(self, keys: torch.Tensor, values: torch.Tensor) -> list[IndexSegment]:
        """keys/values [B, Hkv, L, D] post-RoPE prompt K/V. Builds the index when
        L >= sink + window + update_tokens; returns the segments to upload (0 or 1)."""
        st = self.state
        if st.steady is not None:
            raise RuntimeError(f"prefill() already called for layer {self.layer}")
        self._check_kv("keys", keys, None)
        self._check_kv("values", values, keys.shape[2])
        cfg, length = self.config, keys.shape[2]
        sink = min(cfg.sink_tokens, length)
        cap = cfg.sink_tokens + cfg.window_tokens + cfg.update_tokens
        st.steady = SteadyZone(sink, cap, st.batch, st.kv_heads, st.head_dim, st.dtype, st.device)
        st.steady.extend(keys[:, :, :sink], values[:, :, :sink])
        if length < cfg.index_threshold:
            st.steady.extend(keys[:, :, sink:], values[:, :, sink:])
            st.next_position = sink
            return []
        end = length - cfg.window_tokens
        n_seg = cfg.num_segments(length)
        per_seg = cfg.num_clusters(end - sink, n_seg) // n_seg
        segment = self._cluster(keys[:, :, sink:end], values[:, :, sink:end], sink, n_seg, per_seg)
        st.steady.extend(keys[:, :, end:], values[:, :, end:])
        st.next_position = end
        return [segment]

    # --- decode -----------------------------------------------------------------------------
    def decode(
        self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, StepStats]:
        """One eager decode step. q [B, Hq, D]; k_new, v_new [B, Hkv, D] (post-RoPE).
        Returns (output [B, Hq, D] in q's dtype, stats)."""
        steady = self._steady()
        self._check_step(q, k_new, v_new)
        self.begin_step()
        # one kernel: the new token into the steady zone at its position, the position into
        # its device tensor, q into the step's query buffer
        load_step(k_new, v_new, steady.keys, steady.values, self._pos, steady.length, q, self._q)
        if self.num_clusters == 0:
            out = self._dense(self._q, self._pos)
            stats = self.finish_step(None, steady.length + 1)
            return out.reshape(q.shape).to(q.dtype, copy=True), stats
        qg = self._q.view(self.rows, self.group, self.head_dim)
        out, counts, exec_tokens, selection = self._run(qg, self._pos)
        out, counts = unload_step(out, counts, q.dtype)
        stats = self.finish_step(counts, exec_tokens, selection)
        return out.view(q.shape), stats

    def begin_step(self) -> None:
        """Host side, before a step (and before capturing or replaying one): room in the
        steady zone for the new token and, once indexed, the wave buffer."""
        steady = self._steady()
        if steady.length >= steady.keys.shape[2]:
            steady._resize(steady.length + 1)
        if self.num_clusters:
            self.state.buffer  # noqa: B018 - built here, outside any capture

    def step(
        self,
        q: torch.Tensor,  # [R, G, D] in the layer's dtype
        pos: torch.Tensor,  # [1] int64: the new token's steady position
        k_new: torch.Tensor | None = None,  # [B, Hkv, D]: written at pos first (else already)
        v_new: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The device work of an indexed step: (out [R, G, D] fp32, counts [7] int64, the
        execution buffer's tokens per row). Capturable where `capturable()` says so."""
        if k_new is not None and v_new is not None:
            steady = self._steady()
            write_token(k_new, v_new, steady.keys, steady.values, pos)
        out, counts, exec_tokens, _ = self._run(q, pos)
        return out, counts, exec_tokens

    def capturable(self) -> bool:
        """Whether `step` can be captured in a CUDA graph now: the Triton step on CUDA, an
        index, no recorded selections, and misses read in place from the source's device-
        visible memory (its cluster table) or fetched by pure device work."""
        if not (self.kernels and self.device.type == "cuda" and self.num_clusters > 0):
            return False
        if self.options.record_selection:
            return False
        table = self.source.cluster_table(self.layer, self.sequence_ids)
        return table is not None or self.source.graph_safe()

    def finish_step(
        self,
        counts: torch.Tensor | None,  # [7] int64 (None: a dense step)
        exec_tokens: int,
        selection: Selection | None = None,
    ) -> StepStats:
        """Host side, after a step: its statistics; the steady zone grows by the new token and
        every update_tokens tokens an index update runs (its segment in stats.new_segment)."""
        stats = self.step_stats()
        stats.exec_tokens = exec_tokens
        if counts is not None:
            stats.counts = dict(zip(COUNT_NAMES, counts.unbind(), strict=True))
        stats.selection = selection
        self._steady().length += 1
        self.state.decode_steps += 1
        stats.new_segment = self._maybe_update()
        return stats

    def step_stats(self) -> StepStats:
        """The sizes part of this step's StepStats (before the step's host side ends)."""
        c = self.num_clusters
        return StepStats(
            num_clusters=c,
            retrieval_clusters=self.config.retrieval_clusters(c),
            estimation_clusters=self.config.estimation_clusters(c),
            steady_tokens=self._steady().length + 1,
            dense=c == 0,
        )

    def graph_key(self) -> tuple[int, ...]:
        """What a captured step depends on: the index size and the buffers it addresses."""
        steady, buffer = self._steady(), self.state.buffer
        scratch = buffer._scratch.data_ptr() if buffer._scratch is not None else 0
        table = self.source.cluster_table(self.layer, self.sequence_ids)
        tab = table.tab_k.data_ptr() if table is not None else 0
        return (self.num_clusters, steady.keys.data_ptr(), buffer.stamp.data_ptr(), scratch, tab)

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the wave buffer's state (to undo a warm-up run before a capture)."""
        return self.state.buffer.snapshot()

    def restore(self, saved: list[torch.Tensor]) -> None:
        self.state.buffer.restore(saved)

    # --- internals --------------------------------------------------------------------------
    def _run(
        self, q: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int, Selection | None]:
        """The step on the Triton kernels or the reference: (out, counts, exec tokens,
        selection if recorded)."""
        st = self.state
        if not self.kernels:
            ref = reference_step(st, q, pos)
            shape = (self.batch, self.kv_heads, -1)
            selection = {
                "retrieved": ref.retrieved.view(shape),
                "estimated": ref.ranked.view(shape),
                "estimated_mask": ref.estimated_mask.view(shape),
            }
            record = self.options.record_selection
            return ref.out, ref.counts, ref.exec_tokens, selection if record else None
        table = self.source.cluster_table(self.layer, self.sequence_ids)
        res = fast_step(st, q, pos, table)
        exec_tokens = st.steady_rows()[0].shape[1] + st.exec_tokens()
        exec_tokens += st.hit_page_width() * self.config.page_tokens
        if not self.options.record_selection:
            return res.out, res.counts, exec_tokens, None
        return res.out, res.counts, exec_tokens, self._selection(res.plan, res.estimated_ids)

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

    def _dense(self, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """No index yet: the steady zone holds every token in order (the new one written at
        pos). Computed exactly as the model's FullAttentionBackend decodes (SDPA, GQA, boolean
        mask, the layer's dtype), so outputs are bit-identical to full attention's.
        Returns [B, Hq, 1, D]."""
        steady = self._steady()
        n = steady.length + 1  # tokens so far, the new one included
        keys, values = steady.keys[:, :, :n], steady.values[:, :, :n]  # [B, Hkv, n, D]
        mask = torch.ones(self.batch, 1, 1, n, dtype=torch.bool, device=self.device)
        return F.scaled_dot_product_attention(
            q.unsqueeze(2), keys, values, attn_mask=mask, scale=self._sdpa_scale, enable_gqa=True
        )

    def _maybe_update(self) -> IndexSegment | None:
        """Cluster the oldest update_tokens recent tokens once the window is full."""
        cfg, st = self.config, self.state
        steady = self._steady()
        if steady.recent < cfg.window_tokens + cfg.update_tokens:
            return None
        keys, values = steady.pop_oldest_recent(cfg.update_tokens)
        segment = self._cluster(keys, values, st.next_position, 1, cfg.update_clusters)
        st.next_position += cfg.update_tokens
        log.debug("layer %d: index update, %d clusters", self.layer, self.num_clusters)
        return segment

    def _cluster(
        self, keys: torch.Tensor, values: torch.Tensor, first_position: int, n_seg: int,
        per_seg: int,
    ) -> IndexSegment:  # fmt: skip
        cfg, st = self.config, self.state
        segment = build_segment(
            keys, values, first_position, self.layer, self.num_clusters, n_seg, per_seg,
            cfg.kmeans_iterations, cfg.final_assign_chunk,
            use_triton=None if self.kernels and kernels_available(self.device) else False,
        )  # fmt: skip
        st.meta.append(segment)
        if st._buffer is not None:
            st._buffer.grow(self.num_clusters)
        if self.on_segment is not None:
            self.on_segment(segment)
        return segment

    def _steady(self) -> SteadyZone:
        if self.state.steady is None:
            raise RuntimeError(f"layer {self.layer}: decode before prefill()")
        return self.state.steady

    def _check_kv(self, name: str, t: torch.Tensor, length: int | None) -> None:
        want = (self.batch, self.kv_heads, length if length is not None else t.shape[2],
                self.head_dim)  # fmt: skip
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
