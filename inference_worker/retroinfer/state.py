"""The state of one layer's RetroInfer attention, shared by its step implementations: B batch
slots, each free or holding one sequence, with the steady zone, the wave index's metadata, the
wave buffer, the device positions and the source's cluster table."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from .config import RetroInferConfig
from .index import ClusterMetadata
from .kernels.cluster_table import ClusterRows, ClusterTable
from .misses import MissFetcher
from .source import ClusterSource
from .steady import SteadyZone
from .wave_buffer import WaveBuffer

CACHE_HEADROOM = 1.25  # a rebuilt wave buffer holds this much more than the need of its time


class LayerState:
    """One layer, B slots (R = B * Hkv rows, one per (slot, kv_head))."""

    def __init__(
        self,
        config: RetroInferConfig,
        layer: int,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        source: ClusterSource,
        sequence_ids: Sequence[Hashable | None],
        dtype: torch.dtype,
        device: torch.device,
        scale: float,
    ) -> None:
        self.config, self.layer, self.source = config, layer, source
        self.sequence_ids: list[Hashable | None] = list(sequence_ids)  # None: a free slot
        self.batch, self.kv_heads, self.head_dim = len(self.sequence_ids), num_kv_heads, head_dim
        self.group = num_q_heads // num_kv_heads
        self.dtype, self.device, self.scale = dtype, device, scale
        self.meta = ClusterMetadata(
            self.batch, num_kv_heads, head_dim, dtype, device, config.centroid_dtype(dtype)
        )
        cap = config.sink_tokens + config.window_tokens + config.update_tokens + 1
        self.steady = SteadyZone(cap, self.batch, num_kv_heads, head_dim, dtype, device)
        self.buffer: WaveBuffer | None = None  # built at the first indexed step
        self.table: ClusterTable | None = None  # the source's clusters, where it declares them
        self.table_ok = False  # the table covers every held slot's clusters (direct path)
        self.table_clusters = [0] * self.batch  # clusters of each slot the table holds
        self.misses = MissFetcher(source, layer, self.sequence_ids, self.batch, num_kv_heads)
        self.next_position = [0] * self.batch  # each slot's first not-yet-clustered position
        # [R] int64: each row's next steady position (advanced on the device by every step)
        self.pos = torch.zeros(self.rows, dtype=torch.int64, device=device)
        self.active = torch.zeros(self.rows, dtype=torch.int64, device=device)  # [R] 1: held
        self.decode_steps = 0  # decode steps since the layer was built
        # per slot: cache counters of wave buffers rebuilt while the slot's sequence ran
        self.carried = [[0, 0, 0] for _ in range(self.batch)]  # hits, misses, evictions

    @property
    def rows(self) -> int:
        return self.batch * self.kv_heads

    @property
    def num_clusters(self) -> int:
        """The index's width: the largest slot's cluster count (the step's budgets follow it)."""
        return self.meta.num_clusters

    def slot_rows(self, slot: int) -> slice:
        return slice(slot * self.kv_heads, (slot + 1) * self.kv_heads)

    def occupied(self) -> list[int]:
        return [b for b, s in enumerate(self.sequence_ids) if s is not None]

    def forget(self, slot: int) -> None:
        """Counters of the slot's next sequence start from zero."""
        self.carried[slot] = [0, 0, 0]

    def sync_slot(self, slot: int) -> None:
        """The slot's device position and activity from its host state."""
        rows = self.slot_rows(slot)
        held = self.sequence_ids[slot] is not None
        self.pos[rows] = self.steady.lengths[slot] if held else 0
        self.active[rows] = int(held)

    def ensure_buffer(self) -> WaveBuffer:
        """The wave buffer, (re)built empty when the index needs more cache than it has: at the
        first indexed step, or when a longer sequence takes a slot."""
        cfg, c = self.config, self.num_clusters
        need = math.ceil(cfg.cache_clusters(c) * cfg.cluster_size / cfg.page_tokens)
        if self.buffer is None or self.buffer.pages < need:
            pages = need if self.buffer is None else math.ceil(need * CACHE_HEADROOM)
            self._carry()
            self.buffer = WaveBuffer(
                self.rows, pages, cfg.page_tokens, self.head_dim, self.dtype, self.device
            )
        self.buffer.grow(c)
        return self.buffer

    def counters(self, slot: int) -> list[int]:
        """The slot's cache hits, misses and evictions since its sequence came (one sync)."""
        done = self.carried[slot]
        if self.buffer is None:
            return list(done)
        rows = self.slot_rows(slot)
        now = [int(c[rows].sum()) for c in (self.buffer.hits, self.buffer.misses,
                                           self.buffer.evictions)]  # fmt: skip
        return [a + b for a, b in zip(done, now, strict=True)]

    def grow(self, batch: int) -> None:
        """`batch` slots (more than now): the new ones free. The wave buffer and the cluster
        table are rebuilt at the next step (cache counters carried)."""
        extra = batch - self.batch
        if extra <= 0:
            return
        self._carry()
        self.buffer, self.table = None, None
        self.sequence_ids.extend([None] * extra)
        self.batch = batch
        self.steady.grow(batch)
        self.meta.grow(batch)
        self.table_clusters = [0] * batch
        self.next_position.extend([0] * extra)
        self.carried.extend([0, 0, 0] for _ in range(extra))
        self.misses = MissFetcher(
            self.source, self.layer, self.sequence_ids, self.batch, self.kv_heads
        )
        self.pos = torch.cat([self.pos, self.pos.new_zeros(extra * self.kv_heads)])
        self.active = torch.cat([self.active, self.active.new_zeros(extra * self.kv_heads)])

    def _carry(self) -> None:
        """Add the current wave buffer's counters to each slot's carried ones."""
        if self.buffer is None:
            return
        for slot in self.occupied():
            self.carried[slot] = self.counters(slot)

    def ensure_table(self) -> ClusterTable | None:
        """The source's cluster table of the occupied slots, refreshed where a slot holds
        clusters the table does not; None when the source declares none for some slot."""
        self.table_ok = False
        rows: dict[int, ClusterRows | None] = {}
        for slot in self.occupied():
            count = self.meta.counts[slot]
            if self.table is not None and self.table_clusters[slot] == count:
                continue
            got = self.source.cluster_rows(self.layer, self.sequence_ids[slot]) if count else None
            if count and (got is None or got.size.shape[1] != count):
                return None
            rows[slot] = got
        base = self.source.cluster_base()
        if base is None:
            return None
        if self.table is None or self.table.base_k.data_ptr() != base[0].data_ptr():
            self.table = ClusterTable(
                self.batch, self.kv_heads, self.head_dim, base[0], base[1], self.device
            )
            self.table_clusters = [0] * self.batch
            return self.ensure_table()  # every occupied slot's rows from the new base
        for slot, got in rows.items():
            if got is None:
                self.table.clear(slot)
            else:
                self.table.set(slot, got)
            self.table_clusters[slot] = self.meta.counts[slot]
        self.table_ok = True
        return self.table

    def steady_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The steady zone as rows over its capacity: keys, values [R, CAP, D]."""
        cap = self.steady.capacity
        return (
            self.steady.keys.view(self.rows, cap, self.head_dim),
            self.steady.values.view(self.rows, cap, self.head_dim),
        )

    def exec_tokens(self) -> int:
        """Execution-buffer capacity for retrieved tokens (misses) per row."""
        return self.config.exec_buffer_clusters(self.num_clusters) * self.config.cluster_size

    def hit_page_width(self) -> int:
        """Page-table width for the hit pages of a step (at most every page)."""
        assert self.buffer is not None
        pages = self.exec_tokens() // self.config.page_tokens
        pages += self.config.retrieval_clusters(self.num_clusters)
        return min(pages, self.buffer.pages + 1)
