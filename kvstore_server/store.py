"""The store core: namespaces -> sequences -> (layer, kv_head) head stores, with capacity.

Works on plain numpy arrays and dataclasses; only the servicer touches protobuf. Everything here
runs on the server's event-loop thread, so there is no locking: each call completes before the
next starts, and readers copy (gather) what they return before yielding control.

Capacity counts committed bytes (`bytes_used`, exact: every segment's metadata and K/V bytes plus
a fixed overhead per sequence) and bytes reserved by put streams still arriving, so data in
flight is refused at its segment header, not after it arrived. A commit touching many heads is
all-or-nothing: every head's memory is allocated (and the commit journaled) before any of it
becomes visible.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kvstore_server.arena import ArenaConfig, HeapArena, SharedArena
from kvstore_server.arenas import Arenas
from kvstore_server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from kvstore_server.names import check_name, echo
from kvstore_server.search import SCORINGS, rank_clusters
from kvstore_server.segments import Growth, HeadStore, Segment
from kvstore_server.sequence import Geometry, Sequence

if TYPE_CHECKING:
    from kvstore_server.persistence import Persistence


@dataclass(slots=True, frozen=True)
class StoreConfig:
    capacity_bytes: int = 0  # 0 = unlimited
    sequence_ttl_s: float = 0.0  # idle sequences are dropped after this long; 0 = never
    max_namespaces: int = 4096  # namespaces holding sequences at once

    def __post_init__(self) -> None:
        if self.capacity_bytes < 0:
            raise ValueError(f"capacity_bytes={self.capacity_bytes} must be >= 0")
        if self.sequence_ttl_s < 0:
            raise ValueError(f"sequence_ttl_s={self.sequence_ttl_s} must be >= 0")


@dataclass(slots=True)
class Usage:
    """One namespace's accounting."""

    bytes_used: int = 0
    reserved_bytes: int = 0
    sequences: int = 0


class Reservation:
    """Capacity held by one put stream; `grow` per segment header, `release` when it ends."""

    def __init__(self, store: Store, namespace: str) -> None:
        self.store, self.namespace, self.bytes = store, namespace, 0

    def grow(self, nbytes: int, what: str) -> None:
        self.store._reserve(self.namespace, nbytes, what)
        self.bytes += nbytes

    def release(self) -> None:
        if self.bytes:
            self.store._unreserve(self.namespace, self.bytes)
            self.bytes = 0


class Store:
    """All sequences of all namespaces, with a shared byte budget."""

    def __init__(
        self,
        config: StoreConfig | None = None,
        arenas: Arenas | None = None,
        incarnation_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or StoreConfig()
        self.arenas = arenas or Arenas("off", ArenaConfig())
        self.incarnation_id = incarnation_id or uuid.uuid4().hex
        self.started_unix_s = time.time()
        self.clock = clock
        self.bytes_used = 0
        self.reserved_bytes = 0
        self.persistence: Persistence | None = None
        self._sequences: dict[tuple[str, str], Sequence] = {}
        self._usage: dict[str, Usage] = {}
        self.expired: dict[str, int] = {}  # sequences dropped by the TTL, per namespace
        self.dropped = 0  # sequences deleted or expired, ever

    @property
    def capacity_bytes(self) -> int:
        return self.config.capacity_bytes

    @property
    def bytes_free(self) -> int:
        cap = self.config.capacity_bytes
        return max(cap - self.bytes_used - self.reserved_bytes, 0) if cap else 0

    @property
    def num_sequences(self) -> int:
        return len(self._sequences)

    @property
    def num_namespaces(self) -> int:
        return sum(1 for u in self._usage.values() if u.sequences)

    def usage(self, namespace: str) -> Usage:
        return self._usage.get(namespace) or Usage()

    def namespaces(self) -> list[str]:
        return sorted(self._usage)

    def arena(self, namespace: str) -> HeapArena | SharedArena:
        """The namespace's arena (created, and journaled, on first use)."""
        known = self.arenas.find(namespace)
        arena = self.arenas.get(namespace)
        if known is None and isinstance(arena, SharedArena) and self.persistence is not None:
            self.persistence.arena(namespace, arena.arena_id)
        return arena

    def create(self, namespace: str, sequence_id: str, geometry: Geometry) -> tuple[Sequence, bool]:
        check_name("namespace", namespace)
        check_name("sequence_id", sequence_id)
        existing = self._sequences.get((namespace, sequence_id))
        if existing is not None:
            if existing.geometry != geometry:
                raise AlreadyExists(
                    f"sequence_id={echo(sequence_id)} exists in namespace={echo(namespace)} "
                    f"with geometry {existing.geometry}, requested {geometry}"
                )
            existing.last_used = self.clock()
            return existing, False
        usage = self._usage.get(namespace)
        if usage is None and len(self._usage) >= self.config.max_namespaces:
            raise ResourceExhausted(
                f"max_namespaces={self.config.max_namespaces} namespaces already hold sequences"
            )
        seq = Sequence(namespace, sequence_id, geometry, last_used=self.clock())
        self._check_fits(seq.bytes_used, f"CreateSequence {echo(sequence_id)}")
        if self.persistence is not None:
            self.persistence.create(seq)
        self._sequences[(namespace, sequence_id)] = seq
        self._account(namespace, seq.bytes_used, 1)
        return seq, True

    def get(self, namespace: str, sequence_id: str) -> Sequence:
        """The sequence (renewing its TTL); NotFound otherwise."""
        seq = self._sequences.get((namespace, sequence_id))
        if seq is None:
            check_name("namespace", namespace)
            check_name("sequence_id", sequence_id)
            raise NotFound(
                f"sequence_id={echo(sequence_id)} not found in namespace={echo(namespace)}"
            )
        seq.last_used = self.clock()
        return seq

    def delete(self, namespace: str, sequence_id: str) -> int:
        seq = self.get(namespace, sequence_id)
        if self.persistence is not None:
            self.persistence.delete(seq)
        freed = self._drop(seq)
        if self.persistence is not None:
            self.persistence.maybe_compact()
        return freed

    def _drop(self, seq: Sequence) -> int:
        self.dropped += 1
        del self._sequences[(seq.namespace, seq.sequence_id)]
        seq.release()  # leased extents are freed when their leases end
        self._account(seq.namespace, -seq.bytes_used, -1)
        return seq.bytes_used

    def list_sequences(self, namespace: str) -> list[Sequence]:
        check_name("namespace", namespace)
        return [s for (ns, _), s in sorted(self._sequences.items()) if ns == namespace]

    def renew(self, namespace: str, sequence_ids: list[str]) -> list[str]:
        """Renew the TTL of each sequence; return the ids that do not exist."""
        check_name("namespace", namespace)
        missing, now = [], self.clock()
        for sid in sequence_ids:
            seq = self._sequences.get((namespace, sid))
            if seq is None:
                missing.append(sid)
            else:
                seq.last_used = now
        return missing

    def expire_idle(self) -> int:
        """Drop sequences no RPC named for sequence_ttl_s; return how many."""
        ttl = self.config.sequence_ttl_s
        if not ttl:
            return 0
        deadline = self.clock() - ttl
        idle = [s for s in self._sequences.values() if s.last_used <= deadline]
        for seq in idle:
            if self.persistence is not None:
                self.persistence.delete(seq)
            self._drop(seq)
            ns = seq.namespace
            if ns in self.expired or len(self.expired) < self.config.max_namespaces:
                self.expired[ns] = self.expired.get(ns, 0) + 1
        if idle and self.persistence is not None:
            self.persistence.maybe_compact()
        return len(idle)

    def reservation(self, namespace: str) -> Reservation:
        return Reservation(self, namespace)

    def _check_fits(self, nbytes: int, what: str) -> None:
        cap = self.config.capacity_bytes
        if cap and self.bytes_used + self.reserved_bytes + nbytes > cap:
            raise ResourceExhausted(
                f"{what} needs {nbytes} bytes but only {self.bytes_free} of capacity_bytes={cap} "
                f"are free (bytes_used={self.bytes_used}, reserved_bytes={self.reserved_bytes} "
                f"by puts in flight)"
            )

    def _reserve(self, namespace: str, nbytes: int, what: str) -> None:
        self._check_fits(nbytes, what)
        self.reserved_bytes += nbytes
        self._usage_of(namespace).reserved_bytes += nbytes

    def _unreserve(self, namespace: str, nbytes: int) -> None:
        self.reserved_bytes -= nbytes
        usage = self._usage_of(namespace)
        usage.reserved_bytes -= nbytes
        self._forget_if_empty(namespace, usage)

    def _account(self, namespace: str, nbytes: int, sequences: int) -> None:
        self.bytes_used += nbytes
        usage = self._usage_of(namespace)
        usage.bytes_used += nbytes
        usage.sequences += sequences
        self._forget_if_empty(namespace, usage)

    def _usage_of(self, namespace: str) -> Usage:
        usage = self._usage.get(namespace)
        if usage is None:
            usage = self._usage[namespace] = Usage()
        return usage

    def _forget_if_empty(self, namespace: str, usage: Usage) -> None:
        if not (usage.sequences or usage.reserved_bytes or usage.bytes_used):
            del self._usage[namespace]

    def commit(
        self,
        namespace: str,
        sequence_id: str,
        segments: list[Segment],
        reservation: Reservation,
    ) -> list[int]:
        """Append validated segments atomically (all heads or none); return each segment's
        first cluster id. The reservation's bytes become used bytes."""
        seq = self.get(namespace, sequence_id)
        arena = self.arena(namespace)
        by_head: dict[tuple[int, int], list[int]] = {}
        for i, seg in enumerate(segments):
            by_head.setdefault((seg.layer, seg.kv_head), []).append(i)
        prepared: list[tuple[tuple[int, int], HeadStore, Growth]] = []
        try:
            for key, idx in by_head.items():
                head = seq.head_or_new(*key, arena)
                growth = head.prepare([segments[i] for i in idx])
                prepared.append((key, head, growth))
                head.write(growth)
            if self.persistence is not None:
                self.persistence.commit(seq, prepared)
        except BaseException:
            for _, head, growth in prepared:
                head.abort(growth)
            raise
        firsts = [0] * len(segments)
        for (key, head, growth), idx in zip(prepared, by_head.values(), strict=True):
            for i, first in zip(idx, head.publish(growth), strict=True):
                firsts[i] = first
            seq.adopt(*key, head)
        total = sum(s.nbytes for s in segments)
        reservation.release()
        seq.bytes_used += total
        self._account(namespace, total, 0)
        if self.persistence is not None:
            self.persistence.maybe_compact()
        return firsts

    def search(
        self,
        namespace: str,
        entries: list[tuple[str, int, int, np.ndarray]],  # (sequence_id, layer, kv_head, q [G, D])
        k: int,
        scoring: str,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Validate every entry first, then rank: [(ids [k] int64, scores [k] float32)]."""
        check_name("namespace", namespace)
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
        if not np.isfinite(queries).all():
            raise InvalidArgument(f"entries[{i}].queries has NaN or infinite values")
        head = seq.head(layer, kv_head)
        if head is None or head.num_clusters == 0:
            raise FailedPrecondition(f"entries[{i}]: {seq.where(layer, kv_head)} has no segments")
        if not 1 <= k <= head.num_clusters:
            raise InvalidArgument(
                f"k={k} out of range [1, {head.num_clusters}] (num_clusters of entries[{i}]: "
                f"{seq.where(layer, kv_head)})"
            )
        return head

    def sequences(self) -> list[Sequence]:
        return list(self._sequences.values())

    def adopt(self, seq: Sequence) -> None:
        """Add a sequence rebuilt at a warm restart (already journaled)."""
        self._sequences[(seq.namespace, seq.sequence_id)] = seq
        seq.last_used = self.clock()
        self._account(seq.namespace, seq.bytes_used, 1)
