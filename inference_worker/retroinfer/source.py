"""Where wave-buffer misses come from: the `ClusterSource` protocol and an in-process source."""

from __future__ import annotations

import abc
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .index import IndexSegment
from .kernels import kernels_available
from .kernels.availability import interpreting
from .kernels.cluster_table import ClusterRows, ClusterTable


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
    h, the clusters wanted (-1 = padding, zero tokens; a None sequence id: a free batch slot,
    all -1). The caller guarantees that every row's clusters hold at most `max_tokens` tokens;
    the result is packed to exactly `max_tokens` columns.
    """

    @abc.abstractmethod
    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable | None],
        cluster_ids: torch.Tensor,
        max_tokens: int,
    ) -> FetchedBatch: ...

    def cluster_base(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Two tensors (keys, values dtype) whose addresses `cluster_rows` offsets count from,
        in memory the device's kernels address (device memory, or pinned host memory read over
        PCIe). None: the source has no such memory; misses are fetched."""
        return None

    def cluster_rows(self, layer: int, sequence_id: Hashable) -> ClusterRows | None:
        """Where every cluster of one sequence lies, as element offsets from cluster_base():
        the step then admits misses straight from the source (no fetch). None: not now."""
        del layer, sequence_id
        return None

    def graph_safe(self) -> bool:
        """Whether `fetch` is pure device work (no host synchronisation), so that a step that
        fetches can be captured in a CUDA graph."""
        return False


class InProcessClusterSource(ClusterSource):
    """Keeps uploaded segments in memory (device or host) and gathers clusters with index math.

    Segments on CUDA or in pinned host memory (or on CPU under TRITON_INTERPRET=1) are also
    declared as cluster rows from one base address, so a layer's step reads them in place.
    `fetch` never synchronises with the device, so a RetroInferLayer may capture it in a CUDA
    graph.
    """

    def __init__(self) -> None:
        # (layer, sequence id) -> its segments in cluster order, each with the sequence's row
        self._parts: dict[tuple[int, Hashable], list[tuple[IndexSegment, int]]] = {}
        self._rows: dict[tuple[int, Hashable], ClusterRows] = {}
        self._base: tuple[torch.Tensor, torch.Tensor] | None = None
        self._placed = True  # every segment so far is addressable from the base

    def put(self, sequence_ids: Sequence[Hashable], segment: IndexSegment) -> None:
        """Store a segment of B sequences (`sequence_ids[b]` owns row b)."""
        if len(sequence_ids) != segment.sizes.shape[0]:
            raise ValueError(
                f"sequence_ids has {len(sequence_ids)} ids but the segment holds "
                f"{segment.sizes.shape[0]} sequences"
            )
        for b, seq in enumerate(sequence_ids):
            parts = self._parts.get((segment.layer, seq), [])
            expected = sum(s.num_clusters for s, _ in parts)
            if segment.first_cluster != expected:
                raise ValueError(
                    f"segment.first_cluster must be {expected} for sequence {seq!r} at layer "
                    f"{segment.layer}, got {segment.first_cluster}"
                )
            self._parts[(segment.layer, seq)] = [*parts, (segment, b)]
            self._rows.pop((segment.layer, seq), None)
        self._place(segment)

    def drop(self, sequence_ids: Sequence[Hashable]) -> None:
        """Forget these sequences."""
        ids = set(sequence_ids)
        for key in [k for k in self._parts if k[1] in ids]:
            del self._parts[key]
            self._rows.pop(key, None)

    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable | None],
        cluster_ids: torch.Tensor,  # [B, Hkv, n] int64, -1 = padding
        max_tokens: int,
    ) -> FetchedBatch:
        table = self._table(layer, sequence_ids)
        if table is not None:  # one copy kernel for every row (pure device work)
            return FetchedBatch(*table.fetch(cluster_ids, max_tokens))
        parts = []
        for b, seq in enumerate(sequence_ids):
            ids = cluster_ids[b : b + 1]
            if seq is None or ((layer, seq) not in self._parts and bool((ids < 0).all())):
                parts.append(_nothing(ids, max_tokens, self._any_segment()))  # nothing asked
                continue
            if (layer, seq) not in self._parts:
                raise KeyError(f"no segments for sequence {seq!r} at layer {layer}")
            parts.append(_gather(self._parts[(layer, seq)], ids, max_tokens))
        return FetchedBatch(
            keys=torch.cat([p.keys for p in parts]),
            values=torch.cat([p.values for p in parts]),
            offsets=torch.cat([p.offsets for p in parts]),
        )

    def graph_safe(self) -> bool:
        return True

    def cluster_base(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._base if self._placed else None

    def cluster_rows(self, layer: int, sequence_id: Hashable) -> ClusterRows | None:
        key = (layer, sequence_id)
        if self._base is None or not self._placed or key not in self._parts:
            return None
        if key not in self._rows:
            self._rows[key] = ClusterRows.of_parts(self._parts[key], *self._base)
        return self._rows[key]

    def _table(self, layer: int, sequence_ids: Sequence[Hashable | None]) -> ClusterTable | None:
        """A table of these sequences' rows where the kernels can read them in place."""
        base = self.cluster_base()
        if base is None or not (interpreting() or kernels_available("cuda")):
            return None
        rows = [None if s is None else self.cluster_rows(layer, s) for s in sequence_ids]
        if any(r is None for r, s in zip(rows, sequence_ids, strict=True) if s is not None):
            return None
        if all(r is None for r in rows):
            return None
        device = base[0].device if base[0].is_cuda or interpreting() else torch.device("cuda")
        head_dim = self._any_segment().keys.shape[-1]
        return ClusterTable.of_rows(rows, base[0], base[1], head_dim, device)

    def _place(self, segment: IndexSegment) -> None:
        """The base address at the first segment (a small tensor of the K/V dtype in the same
        kind of memory); a segment kernels cannot read in place turns the rows off."""
        keys = segment.keys
        if interpreting() and not keys.is_cuda:
            readable = True
        else:
            tensors = (segment.keys, segment.values)
            readable = kernels_available("cuda") and all(
                t.is_cuda or t.is_pinned() for t in tensors
            )
        self._placed = self._placed and readable
        if readable and self._base is None:
            pin = not keys.is_cuda and not interpreting()
            base = torch.empty(64, dtype=keys.dtype, device=keys.device, pin_memory=pin)
            self._base = (base, base)

    def _any_segment(self) -> IndexSegment:
        return next(iter(self._parts.values()))[0][0]


def _nothing(ids: torch.Tensor, max_tokens: int, like: IndexSegment) -> FetchedBatch:
    """A free slot's rows: no cluster, `max_tokens` unspecified token rows."""
    _, h, n = ids.shape
    d, dev = like.keys.shape[-1], like.keys.device
    keys = torch.zeros(1, h, max_tokens, d, dtype=like.keys.dtype, device=dev)
    offsets = torch.zeros(1, h, n + 1, dtype=torch.int64, device=dev)
    return FetchedBatch(keys, keys.clone(), offsets)


def _gather(
    parts: list[tuple[IndexSegment, int]],  # one sequence's segments and its row in each
    cluster_ids: torch.Tensor,  # [1, Hkv, n]
    max_tokens: int,
) -> FetchedBatch:
    """Pack the requested clusters of one sequence into `max_tokens` tokens."""
    first = parts[0][0]
    _, h, n = cluster_ids.shape
    d, device = first.keys.shape[-1], first.keys.device
    ids = cluster_ids.to(device)
    start = torch.zeros(1, h, n, dtype=torch.int64, device=device)
    size = torch.zeros_like(start)
    owner = torch.full_like(start, -1)
    for s, (seg, row) in enumerate(parts):  # prefill + one per 1024 generated tokens
        local = ids - seg.first_cluster
        inside = (ids >= 0) & (local >= 0) & (local < seg.num_clusters)
        local = local.clamp(0, seg.num_clusters - 1)
        offs = seg.offsets[row : row + 1]  # [1, Hkv, C_s + 1]
        seg_start = offs.gather(2, local)
        start = torch.where(inside, seg_start, start)
        size = torch.where(inside, offs.gather(2, local + 1) - seg_start, size)
        owner = torch.where(inside, s, owner)
    offsets = torch.zeros(1, h, n + 1, dtype=torch.int64, device=device)
    offsets[..., 1:] = size.cumsum(-1)
    m = torch.arange(max_tokens, device=device).expand(1, h, max_tokens).contiguous()
    which = torch.searchsorted(offsets[..., 1:].contiguous(), m, right=True).clamp(max=n - 1)
    src = start.gather(2, which) + m - offsets.gather(2, which)  # [1, Hkv, M] index in segment
    tok_owner = owner.gather(2, which)
    keys = values = None
    for s, (seg, row) in enumerate(parts):  # padding tokens read a clamped real row
        length = seg.keys.shape[2]
        base = (torch.arange(h, device=device) * length).view(1, h, 1)
        flat = (src.clamp(0, length - 1) + base).view(-1)
        seg_k = seg.keys[row].reshape(-1, d).index_select(0, flat).view(1, h, max_tokens, d)
        seg_v = seg.values[row].reshape(-1, d).index_select(0, flat).view(1, h, max_tokens, d)
        if keys is None or values is None:
            keys, values = seg_k, seg_v
        else:
            mine = (tok_owner == s).unsqueeze(-1)
            keys, values = torch.where(mine, seg_k, keys), torch.where(mine, seg_v, values)
    assert keys is not None and values is not None
    return FetchedBatch(keys=keys.to(device), values=values.to(device), offsets=offsets)
