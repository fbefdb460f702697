"""The state of one layer's RetroInfer attention, shared by its step implementations: the steady
zone, the wave index's metadata, the wave buffer and the source of missed clusters."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from .config import RetroInferConfig
from .index import ClusterMetadata
from .misses import MissFetcher
from .source import ClusterSource
from .steady import SteadyZone
from .wave_buffer import WaveBuffer


class LayerState:
    """One layer, B sequences (R = B * Hkv rows, one per (sequence, kv_head))."""

    def __init__(
        self,
        config: RetroInferConfig,
        layer: int,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        source: ClusterSource,
        sequence_ids: Sequence[Hashable],
        dtype: torch.dtype,
        device: torch.device,
        scale: float,
    ) -> None:
        self.config, self.layer, self.source = config, layer, source
        self.sequence_ids = list(sequence_ids)
        self.batch, self.kv_heads, self.head_dim = len(self.sequence_ids), num_kv_heads, head_dim
        self.group = num_q_heads // num_kv_heads
        self.dtype, self.device, self.scale = dtype, device, scale
        self.meta = ClusterMetadata(
            self.batch, num_kv_heads, head_dim, dtype, device, config.centroid_dtype(dtype)
        )
        self.steady: SteadyZone | None = None  # set by prefill
        self._buffer: WaveBuffer | None = None  # built at the first indexed step
        self.misses = MissFetcher(source, layer, self.sequence_ids, self.batch, num_kv_heads)
        self.next_position = 0  # position of the first not-yet-clustered recent token
        self.decode_steps = 0  # decode steps since prefill

    @property
    def rows(self) -> int:
        return self.batch * self.kv_heads

    @property
    def num_clusters(self) -> int:
        return self.meta.num_clusters

    @property
    def buffer(self) -> WaveBuffer:
        """The wave buffer, sized for the index at its first use (it tracks later clusters)."""
        if self._buffer is None:
            cfg, c = self.config, self.num_clusters
            pages = math.ceil(cfg.cache_clusters(c) * cfg.cluster_size / cfg.page_tokens)
            self._buffer = WaveBuffer(
                self.rows, pages, cfg.page_tokens, self.head_dim, self.dtype, self.device
            )
            self._buffer.grow(c)
        return self._buffer

    def steady_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The steady zone as rows over its capacity: keys, values [R, CAP, D]."""
        assert self.steady is not None
        cap = self.steady.keys.shape[2]
        return (
            self.steady.keys.view(self.rows, cap, self.head_dim),
            self.steady.values.view(self.rows, cap, self.head_dim),
        )

    def exec_tokens(self) -> int:
        """Execution-buffer capacity for retrieved tokens (misses) per row."""
        return self.config.exec_buffer_clusters(self.num_clusters) * self.config.cluster_size

    def hit_page_width(self) -> int:
        """Page-table width for the hit pages of a step (at most every page)."""
        pages = self.exec_tokens() // self.config.page_tokens
        pages += self.config.retrieval_clusters(self.num_clusters)
        return min(pages, self.buffer.pages + 1)
