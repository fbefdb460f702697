"""The store core: namespaces -> sequences -> (layer, kv_head) segment stores, with capacity.

Works on plain numpy arrays and dataclasses; only servicer.py touches protobuf. Everything here
runs on the server's event-loop thread, so there is no locking: each call completes before the
next starts, and readers copy (gather) what they return before yielding control.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from kvstore_server.arena import HeapArena, SharedArena
from kvstore_server.errors import (
    AlreadyExists,
    CapacityExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from kvstore_server.search import SCORINGS, rank_clusters
from kvstore_server.segments import HeadStore, Segment
from wavekv_proto.codec import KV_DTYPE_NAMES, itemsize

MAX_NAME_CHARS = 256
MAX_LAYERS = 1024
MAX_KV_HEADS = 1024
MAX_HEAD_DIM = 4096


@dataclass(slots=True, frozen=True)
class Geometry:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # "float16" | "bfloat16" | "float32"

    def __post_init__(self) -> None:
        for name, value, hi in (
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_kv_heads", self.num_kv_heads, MAX_KV_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
        ):
            if not 1 <= value <= hi:
                raise InvalidArgument(f"geometry.{name}={value} out of range [1, {hi}]")
        if self.dtype not in KV_DTYPE_NAMES:
            raise InvalidArgument(f"geometry.dtype={self.dtype!r} is not one of {KV_DTYPE_NAMES}")

    @property
    def row_bytes(self) -> int:
        return self.head_dim * itemsize(self.dtype)


@dataclass(slots=True)
class Sequence:
    namespace: str
    sequence_id: str
    geometry: Geometry
    created_unix_s: float = field(default_factory=time.time)
    bytes_used: int = 0
    heads: dict[tuple[int, int], HeadStore] = field(default_factory=dict)

    def where(self, layer: int, kv_head: int) -> str:
        return f"sequence_id={self.sequence_id!r} layer={layer} kv_head={kv_head}"

    def check_head(self, field_prefix: str, layer: int, kv_head: int) -> None:
        g = self.geometry
        if not 0 <= layer < g.num_layers:
            raise InvalidArgument(f"{field_prefix}layer={layer} out of range [0, {g.num_layers})")
        if not 0 <= kv_head < g.num_kv_heads:
            raise InvalidArgument(
                f"{field_prefix}kv_head={kv_head} out of range [0, {g.num_kv_heads})"
            )

    def head(self, layer: int, kv_head: int) -> HeadStore | None:
        return self.heads.get((layer, kv_head))

    def head_or_create(
        self, layer: int, kv_head: int, arena: HeapArena | SharedArena | None = None
    ) -> HeadStore:
        head = self.heads.get((layer, kv_head))
        if head is None:
            head = HeadStore(self.geometry.head_dim, self.geometry.row_bytes, arena)
            self.heads[(layer, kv_head)] = head
        return head


def check_name(field_name: str, value: str) -> None:
    if not value or len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(f"{field_name}={value[:40]!r} must be 1..{MAX_NAME_CHARS} characters")


class Store:
    """All sequences of all namespaces, with a byte budget (0 = unlimited)."""

    def __init__(
        self, capacity_bytes: int = 0, arena: HeapArena | SharedArena | None = None
    ) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes={capacity_bytes} must be >= 0")
        self.capacity_bytes = capacity_bytes
        self.arena = arena if arena is not None else HeapArena()
        self.incarnation_id = uuid.uuid4().hex
        self.started_unix_s = time.time()
        self.bytes_used = 0
        self._sequences: dict[tuple[str, str], Sequence] = {}

    @property
    def bytes_free(self) -> int:
        return max(self.capacity_bytes - self.bytes_used, 0) if self.capacity_bytes else 0

    @property
    def num_sequences(self) -> int:
        return len(self._sequences)

    @property
    def num_namespaces(self) -> int:
        return len({ns for ns, _ in self._sequences})

    def create(self, namespace: str, sequence_id: str, geometry: Geometry) -> tuple[Sequence, bool]:
        check_name("namespace", namespace)
        check_name("sequence_id", sequence_id)
        existing = self._sequences.get((namespace, sequence_id))
        if existing is not None:
            if existing.geometry != geometry:
                raise AlreadyExists(
                    f"sequence_id={sequence_id!r} exists in namespace={namespace!r} with geometry "
                    f"{existing.geometry}, requested {geometry}"
                )
            return existing, False
        seq = Sequence(namespace, sequence_id, geometry)
        self._sequences[(namespace, sequence_id)] = seq
        return seq, True

    def get(self, namespace: str, sequence_id: str) -> Sequence:
        seq = self._sequences.get((namespace, sequence_id))
        if seq is None:
            raise NotFound(f"sequence_id={sequence_id!r} not found in namespace={namespace!r}")
        return seq

    def delete(self, namespace: str, sequence_id: str) -> int:
        seq = self.get(namespace, sequence_id)
        del self._sequences[(namespace, sequence_id)]
        for head in seq.heads.values():
            head.release()  # leased extents are freed when their leases end
        self.bytes_used -= seq.bytes_used
        return seq.bytes_used

    def list_sequences(self, namespace: str) -> list[Sequence]:
        return [s for (ns, _), s in sorted(self._sequences.items()) if ns == namespace]

    def check_capacity(self, extra_bytes: int, what: str) -> None:
        """Raise CapacityExceeded when `extra_bytes` more would not fit."""
        if self.capacity_bytes and self.bytes_used + extra_bytes > self.capacity_bytes:
            raise CapacityExceeded(
                f"{what} needs {extra_bytes} bytes but only {self.bytes_free} of "
                f"capacity_bytes={self.capacity_bytes} are free (bytes_used={self.bytes_used})"
            )

    def commit(self, namespace: str, sequence_id: str, segments: list[Segment]) -> list[int]:
        """Append validated segments atomically; return each segment's first cluster id."""
        seq = self.get(namespace, sequence_id)
        total = sum(s.nbytes for s in segments)
        self.check_capacity(total, f"PutSegments of {len(segments)} segments")
        by_head: dict[tuple[int, int], list[int]] = {}
        for i, seg in enumerate(segments):
            by_head.setdefault((seg.layer, seg.kv_head), []).append(i)
        firsts = [0] * len(segments)
        for (layer, kv_head), idx in by_head.items():
            head = seq.head_or_create(layer, kv_head, self.arena)
            for i, first in zip(idx, head.append([segments[i] for i in idx]), strict=True):
                firsts[i] = first
        seq.bytes_used += total
        self.bytes_used += total
        return firsts

    def search(
        self,
        namespace: str,
        entries: list[tuple[str, int, int, np.ndarray]],  # (sequence_id, layer, kv_head, q [G, D])
        k: int,
        scoring: str,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Validate every entry first, then rank: [(ids [k] int64, scores [k] float32)]."""
        if scoring not in SCORINGS:
            raise InvalidArgument(f"scoring={scoring!r} is not one of {SCORINGS}")
        if not entries:
            raise InvalidArgument("entries is empty")
        heads = [self._search_head(namespace, i, e, k) for i, e in enumerate(entries)]
        return [
            rank_clusters(h.centroids, h.sizes, e[3], k, scoring)
            for h, e in zip(heads, entries, strict=True)
        ]

    def _search_head(
        self, namespace: str, i: int, entry: tuple[str, int, int, np.ndarray], k: int
    ) -> HeadStore:
        sequence_id, layer, kv_head, queries = entry
        seq = self.get(namespace, sequence_id)
        seq.check_head(f"entries[{i}].", layer, kv_head)
        d = seq.geometry.head_dim
        if queries.ndim != 2 or queries.shape[0] == 0 or queries.shape[1] != d:
            raise InvalidArgument(
                f"entries[{i}].queries shape={list(queries.shape)}, want [G>=1, {d}]"
            )
        head = seq.head(layer, kv_head)
        if head is None or head.num_clusters == 0:
            raise FailedPrecondition(f"entries[{i}]: {seq.where(layer, kv_head)} has no segments")
        if not 1 <= k <= head.num_clusters:
            raise InvalidArgument(
                f"k={k} out of range [1, {head.num_clusters}] (num_clusters of entries[{i}]: "
                f"{seq.where(layer, kv_head)})"
            )
        return head
