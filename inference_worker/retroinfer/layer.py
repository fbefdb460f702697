"""RetroInferLayer: the per-layer stateful object an engine drives (prefill, then decode steps)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence

import torch

from .attention import estimate, merge, partial_attention, rank_clusters
from .config import RetroInferConfig
from .index import ClusterMetadata, IndexSegment, build_segment
from .source import ClusterSource
from .stats import StepStats
from .steady import SteadyZone
from .wave_buffer import WaveBuffer, _compact

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
    ) -> None:
        if num_q_heads % num_kv_heads:
            raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        self.config, self.layer, self.source = config, layer, source
        self.sequence_ids = list(sequence_ids)
        self.batch, self.kv_heads, self.head_dim = len(self.sequence_ids), num_kv_heads, head_dim
        self.group = num_q_heads // num_kv_heads
        self.dtype, self.device = dtype, torch.device(device)
        self.scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
        self.on_segment = on_segment
        self.meta = ClusterMetadata(self.batch, num_kv_heads, head_dim, dtype, self.device)
        self.buffer: WaveBuffer | None = None
        self.steady: SteadyZone | None = None
        self.next_position = 0  # position of the first not-yet-clustered recent token
        self.record_selection = False  # put the chosen clusters into StepStats.selection

    @property
    def rows(self) -> int:
        return self.batch * self.kv_heads

    @property
    def num_clusters(self) -> int:
        return self.meta.num_clusters

    def prefill(self, keys: torch.Tensor, values: torch.Tensor) -> list[IndexSegment]:
        """keys/values [B, Hkv, L, D] post-RoPE prompt K/V. Builds the index when
        L >= sink + window + update_tokens; returns the segments to upload (0 or 1)."""
        self._check_kv("keys", keys, None)
        self._check_kv("values", values, keys.shape[2])
        cfg, length = self.config, keys.shape[2]
        sink = min(cfg.sink_tokens, length)
        cap = cfg.sink_tokens + cfg.window_tokens + cfg.update_tokens
        self.steady = SteadyZone(sink, cap, self.batch, self.kv_heads, self.head_dim,
                                 self.dtype, self.device)
        self.steady.extend(keys[:, :, :sink], values[:, :, :sink])
        segments: list[IndexSegment] = []
        if length >= cfg.index_threshold:
            end = length - cfg.window_tokens
            n_seg = cfg.num_segments(length)
            per_seg = cfg.num_clusters(end - sink, n_seg) // n_seg
            segments.append(self._cluster(keys[:, :, sink:end], values[:, :, sink:end], sink,
                                          n_seg, per_seg))
            self.steady.extend(keys[:, :, end:], values[:, :, end:])
            self.next_position = end
        else:
            self.steady.extend(keys[:, :, sink:], values[:, :, sink:])
            self.next_position = sink
        return segments

    def decode(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
               ) -> tuple[torch.Tensor, StepStats]:
        """One decode step. q [B, Hq, D]; k_new, v_new [B, Hkv, D] (post-RoPE).
        Returns (output [B, Hq, D] in q's dtype, stats)."""
        if self.steady is None:
            raise RuntimeError("decode() called before prefill()")
        self._check_step(q, k_new, v_new)
        self.steady.extend(k_new.unsqueeze(2), v_new.unsqueeze(2))
        qg = q.reshape(self.rows, self.group, self.head_dim)  # [R, G, D]
        if self.num_clusters == 0:
            out, stats = self._dense(qg)
        else:
            out, stats = self._tripartite(qg)
        stats.new_segment = self._maybe_update()
        return out.reshape(q.shape).to(q.dtype), stats

    def _dense(self, qg: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        st = self._steady_rows()
        o, _ = partial_attention(qg, st[0], st[1], st[2], self.scale)
        n = st[0].shape[1]
        return o, StepStats(steady_tokens=n, exec_tokens=n, dense=True)

    def _tripartite(self, qg: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        cfg, c, r = self.config, self.num_clusters, self.rows
        n_ret, n_est = cfg.retrieval_clusters(c), cfg.estimation_clusters(c)
        centroids = self.meta.centroids.reshape(r, c, self.head_dim)
        sizes = self.meta.sizes.reshape(r, c)
        z, score = rank_clusters(qg, centroids, sizes, self.scale)  # [R, G, C], [R, C]
        top = torch.topk(score, n_ret + n_est, dim=-1, sorted=True).indices  # [R, k]
        top_sizes = sizes.gather(1, top)
        ret, ret_sizes = top[:, :n_ret], top_sizes[:, :n_ret]
        cap_tokens = cfg.exec_buffer_clusters(c) * cfg.cluster_size
        overflow = (ret_sizes > 0) & (ret_sizes.cumsum(1) > cap_tokens)  # reported + estimated
        ret_valid = (ret_sizes > 0) & ~overflow
        buffer = self._buffer(c)
        hit = buffer.lookup(ret, ret_valid)
        miss = ret_valid & ~hit
        miss_ids, miss_sizes = _compact(ret, miss, ret_sizes)
        miss_ids = torch.where(miss_sizes > 0, miss_ids, -1)
        hit_pages = torch.where(hit, buffer._pages_of(ret_sizes), 0).sum(1)
        widths = torch.stack([miss_sizes.sum(1).max(), hit_pages.max()]).tolist()  # one sync
        miss_width = _round_up(max(widths[0], 1), 16)
        fetched = self.source.fetch(self.layer, self.sequence_ids,
                                    miss_ids.view(self.batch, self.kv_heads, n_ret), miss_width)
        miss_k = fetched.keys.to(self.device).reshape(r, miss_width, self.head_dim)
        miss_v = fetched.values.to(self.device).reshape(r, miss_width, self.head_dim)
        miss_off = fetched.offsets.to(self.device).reshape(r, n_ret + 1)
        hit_k, hit_v, hit_fill = buffer.hit_pages(ret, hit, max(widths[1], 1))
        o_x, lse_x, exec_tokens = self._exact(qg, miss_k, miss_v, miss_off, hit_k, hit_v,
                                              hit_fill)
        est_keep = torch.cat([overflow, top_sizes[:, n_ret:] > 0], dim=1)  # [R, k]
        z_top = z.gather(2, top.unsqueeze(1).expand(-1, self.group, -1))  # [R, G, k]
        vs = self.meta.value_sums.reshape(r, c, self.head_dim)
        vs_top = vs.gather(1, top.unsqueeze(-1).expand(-1, -1, self.head_dim))
        o_e, lse_e = estimate(z_top, top_sizes, vs_top, est_keep)
        admitted = buffer.admit(ret, ret_valid, hit, ret_sizes, miss_k, miss_v, miss_off)
        stats = StepStats(
            num_clusters=c, retrieval_clusters=n_ret, estimation_clusters=n_est,
            steady_tokens=self.steady.length if self.steady else 0, exec_tokens=exec_tokens,
            dense=False,
            counts={
                "hits": hit.sum(), "misses": miss.sum(), "admitted": admitted.admitted.sum(),
                "rejected": admitted.rejected.sum(), "evicted": admitted.evicted.sum(),
                "overflow_clusters": overflow.sum(),
                "retrieved_tokens": torch.where(ret_valid, ret_sizes, 0).sum(),
            },
        )
        if self.record_selection:
            shape = (self.batch, self.kv_heads, -1)
            stats.selection = {"retrieved": torch.where(ret_valid, ret, -1).view(shape),
                               "estimated": top.view(shape), "estimated_mask": est_keep.view(shape)}
        return merge(o_x, lse_x, o_e, lse_e), stats

    def _exact(self, qg: torch.Tensor, miss_k: torch.Tensor, miss_v: torch.Tensor,
               miss_off: torch.Tensor, hit_k: torch.Tensor, hit_v: torch.Tensor,
               hit_fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Exact attention over the execution buffer [steady | misses | hits]."""
        r, d, pt = self.rows, self.head_dim, self.config.page_tokens
        st_k, st_v, st_mask = self._steady_rows()
        miss_mask = torch.arange(miss_k.shape[1], device=self.device) < miss_off[:, -1:]
        hit_mask = (torch.arange(pt, device=self.device) < hit_fill.unsqueeze(-1)).reshape(r, -1)
        keys = torch.cat([st_k, miss_k, hit_k.reshape(r, -1, d)], dim=1)  # [R, T, D]
        values = torch.cat([st_v, miss_v, hit_v.reshape(r, -1, d)], dim=1)
        mask = torch.cat([st_mask, miss_mask, hit_mask], dim=1)  # [R, T]
        o, lse = partial_attention(qg, keys, values, mask, self.scale)
        return o, lse, keys.shape[1]

    def _steady_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.steady is not None
        n, r, d = self.steady.length, self.rows, self.head_dim
        keys = self.steady.keys[:, :, :n].reshape(r, n, d)
        values = self.steady.values[:, :, :n].reshape(r, n, d)
        return keys, values, torch.ones(r, n, dtype=torch.bool, device=self.device)

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

    def _cluster(self, keys: torch.Tensor, values: torch.Tensor, first_position: int,
                 n_seg: int, per_seg: int) -> IndexSegment:
        cfg = self.config
        segment = build_segment(keys, values, first_position, self.layer, self.num_clusters,
                                n_seg, per_seg, cfg.kmeans_iterations, cfg.final_assign_chunk)
        self.meta.append(segment)
        if self.buffer is not None:
            self.buffer.grow(self.num_clusters)
        if self.on_segment is not None:
            self.on_segment(segment)
        return segment

    def _buffer(self, num_clusters: int) -> WaveBuffer:
        if self.buffer is None:
            cfg = self.config
            pages = math.ceil(cfg.cache_clusters(num_clusters) * cfg.cluster_size
                              / cfg.page_tokens)
            self.buffer = WaveBuffer(self.rows, pages, cfg.page_tokens, self.head_dim,
                                     self.dtype, self.device)
            self.buffer.grow(num_clusters)
        return self.buffer

    def _check_kv(self, name: str, t: torch.Tensor, length: int | None) -> None:
        want = (self.batch, self.kv_heads, length if length is not None else t.shape[2],
                self.head_dim)
        if t.dim() != 4 or tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape [B, Hkv, L, D] = {list(want)}, "
                             f"got {list(t.shape)}")

    def _check_step(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        want_q = [self.batch, self.kv_heads * self.group, self.head_dim]
        want_kv = [self.batch, self.kv_heads, self.head_dim]
        if list(q.shape) != want_q:
            raise ValueError(f"q must have shape [B, Hq, D] = {want_q}, got {list(q.shape)}")
        for name, t in (("k_new", k_new), ("v_new", v_new)):
            if list(t.shape) != want_kv:
                raise ValueError(f"{name} must have shape [B, Hkv, D] = {want_kv}, "
                                 f"got {list(t.shape)}")


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple
