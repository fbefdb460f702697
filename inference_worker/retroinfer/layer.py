"""RetroInferLayer: the per-layer stateful object an engine drives (prefill, then decode steps)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from .attention import estimate, merge, partial_attention, rank_clusters
from .config import RetroInferConfig
from .fast_step import fast_tripartite
from .graph import StepGraph
from .index import ClusterMetadata, IndexSegment, build_segment
from .kernels import kernels_available
from .kernels.step_io import load_step, unload_step
from .misses import Deferred, MissFetcher, device_batch, empty_misses
from .source import ClusterSource
from .stats import COUNT_NAMES, StepStats, step_counts
from .steady import SteadyZone
from .wave_buffer import WaveBuffer, compact_order

log = logging.getLogger(__name__)


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
        use_cuda_graph: bool = True,
    ) -> None:
        if num_q_heads % num_kv_heads:
            raise ValueError(
                f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )
        self.config, self.layer, self.source = config, layer, source
        self.sequence_ids = list(sequence_ids)
        self.batch, self.kv_heads, self.head_dim = len(self.sequence_ids), num_kv_heads, head_dim
        self.group = num_q_heads // num_kv_heads
        self.dtype, self.device = dtype, torch.device(device)
        self.scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
        self._sdpa_scale = scale  # None: SDPA's own 1/sqrt(D), as full attention passes it
        self.on_segment = on_segment
        self.meta = ClusterMetadata(
            self.batch, num_kv_heads, head_dim, dtype, self.device, config.centroid_dtype(dtype)
        )
        self.buffer: WaveBuffer | None = None
        self.steady: SteadyZone | None = None
        self.next_position = 0  # position of the first not-yet-clustered recent token
        self.record_selection = False  # put the chosen clusters into StepStats.selection
        self.use_cuda_graph = use_cuda_graph
        self.static_shapes = False  # eager steps use the graph's fixed widths (no host sync)
        self.use_kernels = True  # Triton fast path where available (CUDA + triton)
        self.fused_bookkeeping = True  # fast path: wave-buffer bookkeeping in fused kernels
        self.direct_admission = True  # fast path: admitted misses move source -> cache once
        # direct admission from a device-memory source: the decode kernel copies the admitted
        # rows into their pages while attending them (no copy kernel before the attention)
        self.fused_copy = True
        # Triton step: the estimation zone, and with direct admission the steady zone + cache
        # hits, run on side streams while the wave buffer's bookkeeping and admission run on
        # the current one (False: all in order on one stream)
        self.overlap_streams = True
        self._graph: StepGraph | None = None
        self._graph_warm = False  # one eager tripartite step ran (kernels and source warmed up)
        self._pos = torch.zeros(1, dtype=torch.int64, device=self.device)  # the new token's
        self._q = torch.zeros(  # the step's query [B, Hq, D], read in place by the graph
            self.batch, num_q_heads, head_dim, dtype=dtype, device=self.device
        )
        self.decode_steps = 0  # decode() calls since prefill
        self.misses = MissFetcher(source, layer, self.sequence_ids, self.batch, num_kv_heads)

    @property
    def rows(self) -> int:
        return self.batch * self.kv_heads

    @property
    def num_clusters(self) -> int:
        return self.meta.num_clusters

    def prefill(self, keys: torch.Tensor, values: torch.Tensor) -> list[IndexSegment]:
        """keys/values [B, Hkv, L, D] post-RoPE prompt K/V. Builds the index when
        L >= sink + window + update_tokens; returns the segments to upload (0 or 1)."""
        if self.steady is not None:
            raise RuntimeError(f"prefill() already called for layer {self.layer}")
        self._check_kv("keys", keys, None)
        self._check_kv("values", values, keys.shape[2])
        cfg, length = self.config, keys.shape[2]
        sink = min(cfg.sink_tokens, length)
        cap = cfg.sink_tokens + cfg.window_tokens + cfg.update_tokens
        self.steady = SteadyZone(
            sink, cap, self.batch, self.kv_heads, self.head_dim, self.dtype, self.device
        )
        self.steady.extend(keys[:, :, :sink], values[:, :, :sink])
        segments: list[IndexSegment] = []
        if length >= cfg.index_threshold:
            end = length - cfg.window_tokens
            n_seg = cfg.num_segments(length)
            per_seg = cfg.num_clusters(end - sink, n_seg) // n_seg
            segments.append(
                self._cluster(keys[:, :, sink:end], values[:, :, sink:end], sink, n_seg, per_seg)
            )
            self.steady.extend(keys[:, :, end:], values[:, :, end:])
            self.next_position = end
        else:
            self.steady.extend(keys[:, :, sink:], values[:, :, sink:])
            self.next_position = sink
        return segments

    def decode(
        self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, StepStats]:
        """One decode step. q [B, Hq, D]; k_new, v_new [B, Hkv, D] (post-RoPE).
        Returns (output [B, Hq, D] in q's dtype, stats)."""
        steady = self.steady
        if steady is None:
            raise RuntimeError("decode() called before prefill()")
        self._check_step(q, k_new, v_new)
        if steady.length >= steady.keys.shape[2]:
            steady._resize(steady.length + 1)
            self._graph = None
        # one kernel: the new token into the steady zone at its position, the position into
        # its device tensor, q into the step's query buffer (the graph reads both in place)
        load_step(k_new, v_new, steady.keys, steady.values, self._pos, steady.length, q, self._q)
        inputs = (self._q, self._pos)
        c = self.num_clusters
        stats = self.step_stats()
        if c == 0:
            out = self._dense(*inputs)
            stats.exec_tokens = stats.steady_tokens
        elif self._graph_ready() and self._capture(inputs):
            assert self._graph is not None
            out, counts, exec_tokens = self._graph(*inputs)[:3]
            # fresh copies: the graph's buffers are overwritten by the next replay
            out, counts = unload_step(out, counts, q.dtype)
            stats.counts = dict(zip(COUNT_NAMES, counts.unbind(), strict=True))
            stats.exec_tokens = int(exec_tokens.shape[0])
            self.finish_step(stats)
            return out.view(q.shape), stats
        else:
            self._buffer(c)
            widths = self._fixed_widths() if self.static_shapes else None
            out, counts, exec_tokens, *sel = self._tripartite(
                self._q, None, None, self._pos, widths=widths
            )
            stats.counts = dict(zip(COUNT_NAMES, counts.unbind(), strict=True))
            stats.exec_tokens = int(exec_tokens.shape[0])
            if self.record_selection:
                stats.selection = dict(
                    zip(("retrieved", "estimated", "estimated_mask"), sel, strict=True)
                )
            self._graph_warm = True
        self.finish_step(stats)
        return out.reshape(q.shape).to(q.dtype, copy=True), stats

    def step_stats(self) -> StepStats:
        """The sizes part of this step's StepStats (before the step runs)."""
        assert self.steady is not None
        c = self.num_clusters
        return StepStats(
            num_clusters=c,
            retrieval_clusters=self.config.retrieval_clusters(c),
            estimation_clusters=self.config.estimation_clusters(c),
            steady_tokens=self.steady.length + 1,
            dense=c == 0,
        )

    def finish_step(self, stats: StepStats) -> None:
        """Host-side end of a decode step: the steady zone grows by the new token, and every
        update_tokens tokens an index update runs (its segment goes to stats.new_segment)."""
        assert self.steady is not None
        self.steady.length += 1
        self.decode_steps += 1
        stats.new_segment = self._maybe_update()

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> bool:
        """Capture the step graph if needed; on failure fall back to eager for good."""
        if self._graph is None:
            buffer = self._buffer(self.num_clusters)
            try:
                self._graph = StepGraph(
                    partial(self._loaded_step, widths=self._fixed_widths()),
                    inputs,
                    buffer.snapshot,
                    buffer.restore,
                    shared=(0, 1),  # self._q and self._pos, written by decode()'s load_step
                )
            except RuntimeError as err:  # capture unsupported here: stay correct, run eager
                log.warning(
                    "layer %d: CUDA graph capture failed (%s); running eager", self.layer, err
                )
                self.use_cuda_graph = False
                return False
        return True

    def _graph_ready(self) -> bool:
        """CUDA graphs: CUDA device, capturable source, not recording, one eager step done."""
        return (
            self.use_cuda_graph
            and self.device.type == "cuda"
            and self._graph_warm
            and not self.record_selection
            and not self.config.defer_misses
            and getattr(self.source, "capturable", False)
        )

    def _fixed_widths(self) -> tuple[int, int]:
        """Static execution-buffer widths for graph replay: (miss tokens, hit pages)."""
        cfg, c = self.config, self.num_clusters
        tokens = cfg.exec_buffer_clusters(c) * cfg.cluster_size
        pages = tokens // cfg.page_tokens + cfg.retrieval_clusters(c)
        assert self.buffer is not None
        return tokens, min(pages, self.buffer.pages + 1)

    def _dense(self, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """No index yet: the steady zone holds every token in order (the new one written at
        pos). Computed exactly as the model's FullAttentionBackend decodes (SDPA, GQA, boolean
        mask, the layer's dtype), so outputs are bit-identical to full attention's.
        Returns [B, Hq, 1, D]."""
        assert self.steady is not None
        n = self.steady.length + 1  # tokens so far, the new one included
        keys = self.steady.keys[:, :, :n]  # [B, Hkv, n, D]
        values = self.steady.values[:, :, :n]
        mask = torch.ones(self.batch, 1, 1, n, dtype=torch.bool, device=self.device)
        return F.scaled_dot_product_attention(
            q.unsqueeze(2), keys, values, attn_mask=mask, scale=self._sdpa_scale, enable_gqa=True
        )

    def _loaded_step(
        self, q: torch.Tensor, pos: torch.Tensor, widths: tuple[int, int]
    ) -> tuple[torch.Tensor, ...]:
        """The captured step: the new token is already in the steady zone (load_step)."""
        return self._tripartite(q, None, None, pos, widths=widths)

    def _tripartite(
        self,
        q: torch.Tensor,
        k_new: torch.Tensor | None,
        v_new: torch.Tensor | None,
        pos: torch.Tensor,
        widths: tuple[int, int] | None,
    ) -> tuple[torch.Tensor, ...]:
        """The step's device work. Returns (out [R, G, D] fp32, counts [7], exec marker [T],
        retrieved ids, ranked ids, estimated mask). widths None: measured (one host sync).
        k_new / v_new [B, Hkv, D]: written into the steady zone at pos first; None: already
        there (decode()'s load_step)."""
        cfg = self.config  # fast path: misses always exact this step
        defer = cfg.defer_misses and self.decode_steps >= cfg.defer_warmup_steps
        if (
            self.use_kernels
            and not self.record_selection
            and not defer
            and kernels_available(self.device)
        ):
            return fast_tripartite(self, q, k_new, v_new, pos, widths)
        assert self.steady is not None
        if k_new is not None and v_new is not None:
            self.steady.append_at(k_new, v_new, pos)
        cfg, c, r, d = self.config, self.num_clusters, self.rows, self.head_dim
        qg = q.reshape(r, self.group, d)  # [R, G, D]
        n_ret, n_est = cfg.retrieval_clusters(c), cfg.estimation_clusters(c)
        sizes = self.meta.sizes.reshape(r, c)
        cs = self.meta.centroid_scale
        cs = cs.reshape(r, c) if cs is not None else None
        z, score = rank_clusters(qg, self.meta.centroids.reshape(r, c, d), sizes, self.scale, cs)
        top = torch.topk(score, n_ret + n_est, dim=-1, sorted=True).indices  # [R, k]
        top_sizes = sizes.gather(1, top)
        ret, ret_sizes = top[:, :n_ret], top_sizes[:, :n_ret]
        cap_tokens = cfg.exec_buffer_clusters(c) * cfg.cluster_size
        overflow = (ret_sizes > 0) & (ret_sizes.cumsum(1) > cap_tokens)  # reported + estimated
        ret_valid = (ret_sizes > 0) & ~overflow
        buffer = self._buffer(c)
        self._admit_deferred(buffer)
        hit = buffer.lookup(ret, ret_valid)
        miss = ret_valid & ~hit
        order, kept = compact_order(miss)
        miss_ids = torch.where(kept, ret.gather(1, order), -1)  # [R, n_ret] misses first
        if widths is None:
            miss_tokens = torch.where(miss, ret_sizes, 0).sum(1).max()
            hit_pages = torch.where(hit, buffer._pages_of(ret_sizes), 0).sum(1).max()
            need = torch.stack([miss_tokens, hit_pages]).tolist()  # the step's one host sync
            widths = (_round_up(max(need[0], 1), 64), max(need[1], 1))
        pending = self.misses.start(miss_ids, widths[0])  # runs while the estimation is computed
        est_keep = torch.cat([overflow | (miss & defer), top_sizes[:, n_ret:] > 0], dim=1)
        z_top = z.gather(2, top.unsqueeze(1).expand(-1, self.group, -1))  # [R, G, k]
        flat_top = (top + (torch.arange(r, device=self.device) * c).view(r, 1)).view(-1)
        vs_top = self.meta.value_sums.reshape(r * c, d).index_select(0, flat_top).view(r, -1, d)
        vs_top = vs_top.float()  # [R, k, D] (kept in the model dtype)
        o_e, lse_e = estimate(z_top, top_sizes, vs_top, est_keep)
        hit_k, hit_v, hit_fill = buffer.hit_pages(ret, hit, widths[1])
        if defer:  # misses estimated now, admitted at this layer's next step
            self.misses.deferred = Deferred(ret, ret_valid, hit, ret_sizes, pending, widths[0])
            miss_k, miss_v, miss_off = empty_misses(r, n_ret, d, self.dtype, self.device)
        else:
            miss_k, miss_v, miss_off = device_batch(pending.result(), r, n_ret, self.device)
        o_x, lse_x, exec_tokens = self._exact(
            qg, pos, miss_k, miss_v, miss_off, hit_k, hit_v, hit_fill
        )
        admit_valid = ret_valid & hit if defer else ret_valid  # deferred: hits touched only
        admitted = buffer.admit(ret, admit_valid, hit, ret_sizes, miss_k, miss_v, miss_off)
        counts = step_counts(hit, miss, admitted, overflow, ret_valid, ret_sizes)
        shape = (self.batch, self.kv_heads, -1)
        return (
            merge(o_x, lse_x, o_e, lse_e),
            counts,
            exec_tokens,
            torch.where(ret_valid, ret, -1).view(shape),
            top.view(shape),
            est_keep.view(shape),
        )

    def _admit_deferred(self, buffer: WaveBuffer) -> None:
        """Deferred mode: admit the previous step's fetched misses before this step's lookup."""
        deferred = self.misses.take_deferred()
        if deferred is not None:
            n = deferred.ret.shape[1]
            k, v, off = device_batch(deferred.pending.result(), self.rows, n, self.device)
            buffer.admit(
                deferred.ret, deferred.ret_valid, deferred.hit, deferred.ret_sizes, k, v, off
            )

    def _exact(
        self,
        qg: torch.Tensor,
        pos: torch.Tensor,
        miss_k: torch.Tensor,
        miss_v: torch.Tensor,
        miss_off: torch.Tensor,
        hit_k: torch.Tensor,
        hit_v: torch.Tensor,
        hit_fill: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact attention over the execution buffer [steady | misses | hits]."""
        r, d, pt = self.rows, self.head_dim, self.config.page_tokens
        st_k, st_v, st_mask = self._steady_rows(pos)
        miss_mask = torch.arange(miss_k.shape[1], device=self.device) < miss_off[:, -1:]
        hit_mask = (torch.arange(pt, device=self.device) < hit_fill.unsqueeze(-1)).reshape(r, -1)
        keys = torch.cat([st_k, miss_k, hit_k.reshape(r, -1, d)], dim=1)  # [R, T, D]
        values = torch.cat([st_v, miss_v, hit_v.reshape(r, -1, d)], dim=1)
        mask = torch.cat([st_mask, miss_mask, hit_mask], dim=1)  # [R, T]
        keys = torch.where(mask.unsqueeze(-1), keys, 0)  # padding rows may hold anything
        values = torch.where(mask.unsqueeze(-1), values, 0)
        o, lse = partial_attention(qg, keys, values, mask, self.scale)
        return o, lse, mask[0]

    def _steady_rows(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steady zone as rows over its whole capacity, masked past position pos [1]."""
        assert self.steady is not None
        cap, r, d = self.steady.keys.shape[2], self.rows, self.head_dim
        mask = (torch.arange(cap, device=self.device) <= pos).expand(r, cap)
        return self.steady.keys.view(r, cap, d), self.steady.values.view(r, cap, d), mask

    def _maybe_update(self) -> IndexSegment | None:
        """Cluster the oldest update_tokens recent tokens once the window is full."""
        cfg, steady = self.config, self.steady
        assert steady is not None
        if steady.recent < cfg.window_tokens + cfg.update_tokens:
            return None
        keys, values = steady.pop_oldest_recent(cfg.update_tokens)
        segment = self._cluster(keys, values, self.next_position, 1, cfg.update_clusters)
        self.next_position += cfg.update_tokens
        log.debug("layer %d: index update, %d clusters", self.layer, self.num_clusters)
        return segment

    def _cluster(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        first_position: int,
        n_seg: int,
        per_seg: int,
    ) -> IndexSegment:
        cfg = self.config
        segment = build_segment(
            keys,
            values,
            first_position,
            self.layer,
            self.num_clusters,
            n_seg,
            per_seg,
            cfg.kmeans_iterations,
            cfg.final_assign_chunk,
            use_triton=None if self.use_kernels else False,
        )
        self.meta.append(segment)
        self._graph = None  # re-captured at the next step (shapes changed); no eager step needed
        if self.buffer is not None:
            self.buffer.grow(self.num_clusters)
        if self.on_segment is not None:
            self.on_segment(segment)
        return segment

    def _buffer(self, num_clusters: int) -> WaveBuffer:
        if self.buffer is None:
            cfg = self.config
            pages = math.ceil(cfg.cache_clusters(num_clusters) * cfg.cluster_size / cfg.page_tokens)
            self.buffer = WaveBuffer(
                self.rows, pages, cfg.page_tokens, self.head_dim, self.dtype, self.device
            )
            self.buffer.grow(num_clusters)
        return self.buffer

    def _check_kv(self, name: str, t: torch.Tensor, length: int | None) -> None:
        want = (
            self.batch,
            self.kv_heads,
            length if length is not None else t.shape[2],
            self.head_dim,
        )
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


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple
