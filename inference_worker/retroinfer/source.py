"""Where wave-buffer misses come from: the `ClusterSource` protocol and an in-process source."""

from __future__ import annotations

import abc
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .index import IndexSegment
from .kernels import kernels_available
from .kernels.availability import interpreting
from .kernels.cluster_table import ClusterTable


@dataclass(slots=True)
class FetchedBatch:
    """Requested clusters' K/V packed per row, in request order."""

    keys: torch.Tensor  # [B, Hkv, M, D]; rows past offsets[..., -1] are padding (unspecified)
    values: torch.Tensor  # [B, Hkv, M, D]
    offsets: torch.Tensor  # [B, Hkv, n + 1] int64 token offset of each requested cluster


class ClusterSource(abc.ABC):
    """Where missed clusters come from: cluster K/V by global cluster id, one batched call per
    layer, plus the capabilities a source declares (each with a default: none).

    `fetch`: `cluster_ids` [B, Hkv, n] int64 holds, for sequence `sequence_ids[b]` and KV head
    h, the clusters wanted (-1 = padding, zero tokens). The caller guarantees that every row's
    clusters hold at most `max_tokens` tokens; the result is packed to exactly `max_tokens`
    columns.
    """

    @abc.abstractmethod
    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable],
        cluster_ids: torch.Tensor,
        max_tokens: int,
    ) -> FetchedBatch: ...

    def cluster_table(self, layer: int, sequence_ids: Sequence[Hashable]) -> ClusterTable | None:
        """Where every cluster of these sequences lies in memory the device reads (its own, or
        pinned host memory): the step then admits misses straight from the source (no fetch).
        None: no such table; misses are fetched."""
        del layer, sequence_ids
        return None

    def graph_safe(self) -> bool:
        """Whether `fetch` is pure device work (no host synchronisation), so that a step that
        fetches can be captured in a CUDA graph."""
        return False


class InProcessClusterSource(ClusterSource):
    """Keeps uploaded segments in memory (device or host) and gathers clusters with index math.

    Sequences uploaded together by one `put` (one batched prefill) are fetched together in one
    vectorised gather; any other combination is served sequence by sequence. `fetch` never
    synchronises with the device, so a RetroInferLayer may capture it in a CUDA graph.
    """

    def __init__(self) -> None:
        # (layer, sequence ids of the batch) -> that batch's segments in id order
        self._groups: dict[tuple[int, tuple[Hashable, ...]], list[IndexSegment]] = {}
        self._where: dict[tuple[int, Hashable], tuple[tuple[Hashable, ...], int]] = {}
        self._tables: dict[tuple[int, tuple[Hashable, ...]], ClusterTable] = {}

    def put(self, sequence_ids: Sequence[Hashable], segment: IndexSegment) -> None:
        """Store a segment of B sequences (`sequence_ids[b]` owns row b)."""
        key = (segment.layer, tuple(sequence_ids))
        if len(key[1]) != segment.sizes.shape[0]:
            raise ValueError(
                f"sequence_ids has {len(key[1])} ids but the segment holds "
                f"{segment.sizes.shape[0]} sequences"
            )
        group = self._groups.setdefault(key, [])
        expected = sum(s.num_clusters for s in group)
        if segment.first_cluster != expected:
            raise ValueError(
                f"segment.first_cluster must be {expected} for layer {segment.layer}, "
                f"got {segment.first_cluster}"
            )
        group.append(segment)
        self._tables.pop(key, None)
        for b, seq in enumerate(key[1]):
            self._where[(segment.layer, seq)] = (key[1], b)

    def drop(self, sequence_ids: Sequence[Hashable]) -> None:
        """Forget a batch of sequences that was uploaded together."""
        ids = tuple(sequence_ids)
        for group in [k for k in self._groups if k[1] == ids]:
            del self._groups[group]
            self._tables.pop(group, None)
        for where in [k for k in self._where if k[1] in ids]:
            del self._where[where]

    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable],
        cluster_ids: torch.Tensor,  # [B, Hkv, n] int64, -1 = padding
        max_tokens: int,
    ) -> FetchedBatch:
        ids = tuple(sequence_ids)
        if (layer, ids) in self._groups:
            table = self._table((layer, ids))
            if table is not None:  # one copy kernel for the whole layer (CUDA)
                return FetchedBatch(*table.fetch(cluster_ids, max_tokens))
            return _gather(self._groups[(layer, ids)], None, cluster_ids, max_tokens)
        parts = []
        for b, seq in enumerate(ids):
            if (layer, seq) not in self._where:
                raise KeyError(f"no segments for sequence {seq!r} at layer {layer}")
            group_ids, row = self._where[(layer, seq)]
            parts.append(
                _gather(self._groups[(layer, group_ids)], row, cluster_ids[b : b + 1], max_tokens)
            )
        return FetchedBatch(
            keys=torch.cat([p.keys for p in parts]),
            values=torch.cat([p.values for p in parts]),
            offsets=torch.cat([p.offsets for p in parts]),
        )

    def graph_safe(self) -> bool:
        return True

    def cluster_table(self, layer: int, sequence_ids: Sequence[Hashable]) -> ClusterTable | None:
        """The table of a batch uploaded together whose segments are on CUDA or in pinned host
        memory (kernels read them in place); None otherwise."""
        key = (layer, tuple(sequence_ids))
        return self._table(key) if key in self._groups else None

    def _table(self, key: tuple[int, tuple[Hashable, ...]]) -> ClusterTable | None:
        """The group's cluster table when its segments are on CUDA or in pinned host memory
        and the Triton kernels can run there (or on CPU under TRITON_INTERPRET=1)."""
        if key not in self._tables:
            segs = self._groups[key]
            keys = segs[0].keys
            if interpreting() and not keys.is_cuda:
                device = torch.device("cpu")
            else:
                tensors = [t for s in segs for t in (s.keys, s.values)]
                if not all(t.is_cuda or t.is_pinned() for t in tensors):
                    return None
                if not kernels_available("cuda"):
                    return None
                device = keys.device if keys.is_cuda else torch.device("cuda", 0)
            self._tables[key] = ClusterTable(self._groups[key], device)
        return self._tables[key]


def _gather(
    segments: list[IndexSegment],
    row: int | None,
    cluster_ids: torch.Tensor,  # [B, Hkv, n]
    max_tokens: int,
) -> FetchedBatch:
    """Pack the requested clusters of `segments` (rows `row:row+1`, or all) into M tokens."""
    sel = slice(None) if row is None else slice(row, row + 1)
    first = segments[0]
    b, h, n = cluster_ids.shape
    d = first.keys.shape[-1]
    device = first.keys.device
    ids = cluster_ids.to(device)
    start = torch.zeros(b, h, n, dtype=torch.int64, device=device)
    size = torch.zeros_like(start)
    owner = torch.full_like(start, -1)
    for s, seg in enumerate(segments):  # few segments: prefill + one per 1024 generated tokens
        local = ids - seg.first_cluster
        inside = (ids >= 0) & (local >= 0) & (local < seg.num_clusters)
        local = local.clamp(0, seg.num_clusters - 1)
        offs = seg.offsets[sel]  # [B, Hkv, C_s + 1]
        seg_start = offs.gather(2, local)
        start = torch.where(inside, seg_start, start)
        size = torch.where(inside, offs.gather(2, local + 1) - seg_start, size)
        owner = torch.where(inside, s, owner)
    offsets = torch.zeros(b, h, n + 1, dtype=torch.int64, device=device)
    offsets[..., 1:] = size.cumsum(-1)
    m = torch.arange(max_tokens, device=device).expand(b, h, max_tokens).contiguous()
    which = torch.searchsorted(offsets[..., 1:].contiguous(), m, right=True).clamp(max=n - 1)
    src = start.gather(2, which) + m - offsets.gather(2, which)  # [B, Hkv, M] index in segment
    tok_owner = owner.gather(2, which)
    keys = values = None
    for s, seg in enumerate(segments):  # padding tokens read a clamped real row (masked later)
        length = seg.keys.shape[2]
        base = (torch.arange(b * h, device=device) * length).view(b, h, 1)
        flat = (src.clamp(0, length - 1) + base).view(-1)
        seg_k = seg.keys[sel].reshape(-1, d).index_select(0, flat).view(b, h, max_tokens, d)
        seg_v = seg.values[sel].reshape(-1, d).index_select(0, flat).view(b, h, max_tokens, d)
        if keys is None or values is None:
            keys, values = seg_k, seg_v
        else:
            mine = (tok_owner == s).unsqueeze(-1)
            keys, values = torch.where(mine, seg_k, keys), torch.where(mine, seg_v, values)
    assert keys is not None and values is not None
    return FetchedBatch(keys=keys, values=values, offsets=offsets)
