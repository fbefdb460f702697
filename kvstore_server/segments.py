"""One (layer, kv_head) of a sequence: cluster-major K/V rows plus cluster metadata.

Rows are stored as raw bytes (uint8 [rows, D * itemsize]); the store never interprets K/V
values, so fp16, bf16 and fp32 share one code path. Buffers grow geometrically so that
appending a decode-time segment copies the old rows only amortised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvstore_server.arena import Extent, HeapArena, SharedArena
from kvstore_server.errors import InvalidArgument

GROWTH = 1.5


@dataclass(slots=True)
class Segment:
    """A validated segment ready to append (arrays already host-resident)."""

    layer: int
    kv_head: int
    centroids: np.ndarray  # [C, D] float32
    sizes: np.ndarray  # [C] int64
    value_sums: np.ndarray  # [C, D] float32
    offsets: np.ndarray  # [C + 1] int64
    keys: np.ndarray  # [N, row_bytes] uint8
    values: np.ndarray  # [N, row_bytes] uint8

    @property
    def num_clusters(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.keys.shape[0])

    @property
    def nbytes(self) -> int:
        arrays = (self.centroids, self.sizes, self.value_sums, self.offsets, self.keys, self.values)
        return sum(a.nbytes for a in arrays)


def check_metadata(
    where: str,
    centroids: np.ndarray,  # [C, D] float32
    sizes: np.ndarray,  # [C] int
    value_sums: np.ndarray,  # [C, D] float32
    offsets: np.ndarray,  # [C + 1] int64
    head_dim: int,
    num_rows: int,
) -> None:
    """Raise InvalidArgument naming the field when the cluster metadata is inconsistent."""
    if centroids.ndim != 2 or centroids.shape[1] != head_dim:
        raise InvalidArgument(
            f"{where}: centroids shape={list(centroids.shape)}, want [C, {head_dim}]"
        )
    num_clusters = centroids.shape[0]
    if num_clusters == 0:
        raise InvalidArgument(f"{where}: centroids is empty (C=0)")
    if sizes.shape != (num_clusters,):
        raise InvalidArgument(f"{where}: sizes shape={list(sizes.shape)}, want [{num_clusters}]")
    if value_sums.shape != centroids.shape:
        raise InvalidArgument(
            f"{where}: value_sums shape={list(value_sums.shape)}, want {list(centroids.shape)}"
        )
    if offsets.shape != (num_clusters + 1,):
        raise InvalidArgument(
            f"{where}: offsets shape={list(offsets.shape)}, want [{num_clusters + 1}]"
        )
    if num_rows == 0:
        raise InvalidArgument(f"{where}: keys is empty (N=0)")
    if offsets[0] != 0 or offsets[-1] != num_rows:
        raise InvalidArgument(
            f"{where}: offsets must run from 0 to N={num_rows}, got offsets[0]={int(offsets[0])} "
            f"offsets[-1]={int(offsets[-1])}"
        )
    diffs = np.diff(offsets)
    bad = np.flatnonzero(diffs != sizes)
    if bad.size:
        i = int(bad[0])
        raise InvalidArgument(
            f"{where}: offsets do not add up: offsets[{i + 1}]-offsets[{i}]={int(diffs[i])} "
            f"but sizes[{i}]={int(sizes[i])}"
        )
    if (sizes < 0).any():
        raise InvalidArgument(f"{where}: sizes has negative entries")


@dataclass(slots=True)
class Growth:
    """An append prepared by HeadStore.prepare: the buffers it writes into (new ones where the
    current are full). Nothing is visible until `publish`; `abort` frees what was allocated."""

    segments: list[Segment]
    extent: Extent | None  # a new K/V extent (None: the current one has room)
    keys: np.ndarray  # [cap, row_bytes] uint8: where the new rows go (new or current extent)
    values: np.ndarray  # [cap, row_bytes] uint8
    metadata: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None  # grown arrays
    num_clusters: int = 0  # clusters / rows after the append
    num_rows: int = 0


class HeadStore:
    """Cluster-major K/V of one (layer, kv_head), appended segment by segment.

    An append is prepare (allocate; may fail, changes nothing) -> write (copy rows and
    metadata past the live counts; invisible) -> publish (bump the counts, free the old extent)
    or abort, so a store commit over many heads is all-or-nothing.
    """

    __slots__ = (
        "_arena",
        "_centroids",
        "_extent",
        "_keys",
        "_offsets",
        "_sizes",
        "_value_sums",
        "_values",
        "head_dim",
        "num_clusters",
        "num_rows",
        "num_segments",
        "row_bytes",
    )

    def __init__(
        self, head_dim: int, row_bytes: int, arena: HeapArena | SharedArena | None = None
    ) -> None:
        self._arena = arena if arena is not None else HeapArena()
        self._extent: Extent | None = None
        self.head_dim = head_dim
        self.row_bytes = row_bytes
        self.num_clusters = 0
        self.num_rows = 0
        self.num_segments = 0
        self._centroids = np.empty((0, head_dim), np.float32)  # [capC, D]
        self._value_sums = np.empty((0, head_dim), np.float32)  # [capC, D]
        self._sizes = np.empty(0, np.int64)  # [capC]
        self._offsets = np.zeros(1, np.int64)  # [capC + 1], global row offsets
        self._keys = np.empty((0, row_bytes), np.uint8)  # [capN, row_bytes]
        self._values = np.empty((0, row_bytes), np.uint8)  # [capN, row_bytes]

    @property
    def centroids(self) -> np.ndarray:  # [C, D] float32
        return self._centroids[: self.num_clusters]

    @property
    def value_sums(self) -> np.ndarray:  # [C, D] float32
        return self._value_sums[: self.num_clusters]

    @property
    def sizes(self) -> np.ndarray:  # [C] int64
        return self._sizes[: self.num_clusters]

    @property
    def offsets(self) -> np.ndarray:  # [C + 1] int64
        return self._offsets[: self.num_clusters + 1]

    @property
    def keys(self) -> np.ndarray:  # [N, row_bytes] uint8
        return self._keys[: self.num_rows]

    @property
    def values(self) -> np.ndarray:  # [N, row_bytes] uint8
        return self._values[: self.num_rows]

    def append(self, segments: list[Segment]) -> list[int]:
        """prepare + write + publish in one go (a single head)."""
        growth = self.prepare(segments)
        self.write(growth)
        return self.publish(growth)

    def prepare(self, segments: list[Segment]) -> Growth:
        """Allocate what the append needs. Raises (MemoryError, OSError) with nothing changed."""
        clusters = self.num_clusters + sum(s.num_clusters for s in segments)
        rows = self.num_rows + sum(s.num_rows for s in segments)
        metadata = None
        if clusters > self._sizes.shape[0]:
            cap = max(clusters, int(self._sizes.shape[0] * GROWTH))
            metadata = (
                _grown(self._centroids, cap, self.num_clusters),
                _grown(self._value_sums, cap, self.num_clusters),
                _grown(self._sizes, cap, self.num_clusters),
                _grown(self._offsets, cap + 1, self.num_clusters + 1),
            )
        if rows <= self._keys.shape[0]:
            return Growth(segments, None, self._keys, self._values, metadata, clusters, rows)
        cap = max(rows, int(self._keys.shape[0] * GROWTH))
        rb = self.row_bytes
        extent = self._arena.alloc(2 * cap * rb, rb)
        keys = extent.data[: cap * rb].reshape(cap, rb)  # [cap, row_bytes]
        values = extent.data[cap * rb :].reshape(cap, rb)  # [cap, row_bytes]
        return Growth(segments, extent, keys, values, metadata, clusters, rows)

    def write(self, growth: Growth) -> None:
        """Copy the old rows (if the extent moved) and the new segments past the live counts."""
        keys, values = growth.keys, growth.values
        if growth.extent is not None:
            keys[: self.num_rows] = self._keys[: self.num_rows]
            values[: self.num_rows] = self._values[: self.num_rows]
        centroids, value_sums, sizes, offsets = growth.metadata or (
            self._centroids,
            self._value_sums,
            self._sizes,
            self._offsets,
        )
        c0, n0 = self.num_clusters, self.num_rows
        for seg in growth.segments:
            c1, n1 = c0 + seg.num_clusters, n0 + seg.num_rows
            centroids[c0:c1] = seg.centroids
            value_sums[c0:c1] = seg.value_sums
            sizes[c0:c1] = seg.sizes
            offsets[c0 + 1 : c1 + 1] = seg.offsets[1:] + n0
            keys[n0:n1] = seg.keys
            values[n0:n1] = seg.values
            c0, n0 = c1, n1

    def publish(self, growth: Growth) -> list[int]:
        """Make the written append visible; return the first global cluster id of each
        segment. Cannot fail."""
        if growth.metadata is not None:
            self._centroids, self._value_sums, self._sizes, self._offsets = growth.metadata
        if growth.extent is not None:
            self.release()
            self._extent, self._keys, self._values = growth.extent, growth.keys, growth.values
        firsts, c = [], self.num_clusters
        for seg in growth.segments:
            firsts.append(c)
            c += seg.num_clusters
        self.num_clusters, self.num_rows = growth.num_clusters, growth.num_rows
        self.num_segments += len(growth.segments)
        return firsts

    def abort(self, growth: Growth) -> None:
        """Give back what `prepare` allocated (nothing visible changed)."""
        if growth.extent is not None:
            self._arena.free(growth.extent)
            growth.extent = None

    def restore(
        self,
        extent: Extent,
        num_rows: int,
        metadata: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        num_segments: int,
    ) -> None:
        """State re-attached at a warm restart: rows already in `extent`, metadata
        (centroids [C, D], value_sums [C, D], sizes [C], offsets [C + 1]) from the journal."""
        cap = extent.data.shape[0] // (2 * self.row_bytes)
        rb = self.row_bytes
        self._extent = extent
        self._keys = extent.data[: cap * rb].reshape(cap, rb)
        self._values = extent.data[cap * rb : 2 * cap * rb].reshape(cap, rb)
        self._centroids, self._value_sums, self._sizes, self._offsets = metadata
        self.num_clusters, self.num_rows = int(metadata[2].shape[0]), num_rows
        self.num_segments = num_segments

    @property
    def extent(self) -> Extent | None:
        """The arena extent holding keys then values (None before the first append)."""
        return self._extent

    @property
    def capacity_rows(self) -> int:
        return int(self._keys.shape[0])

    def release(self) -> None:
        """Give the K/V extent back to the arena (deferred there while leased)."""
        if self._extent is not None:
            self._arena.free(self._extent)
            self._extent = None
            self._keys = self._values = np.empty((0, self.row_bytes), np.uint8)

    def gather_rows(self, cluster_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cluster_ids [n] int64 -> (row index [M] int64, cluster offsets [n + 1] int64).

        Vectorised: no Python loop over clusters. Ids must already be range-checked.
        """
        offsets = self.offsets
        starts = offsets[cluster_ids]  # [n]
        lens = offsets[cluster_ids + 1] - starts  # [n]
        out_offsets = np.zeros(cluster_ids.shape[0] + 1, np.int64)  # [n + 1]
        np.cumsum(lens, out=out_offsets[1:])
        total = int(out_offsets[-1])
        rows = np.arange(total, dtype=np.int64)  # [M]
        rows += np.repeat(starts - out_offsets[:-1], lens)
        return rows, out_offsets


def _grown(arr: np.ndarray, cap: int, used: int) -> np.ndarray:
    out = np.empty((cap, *arr.shape[1:]), arr.dtype)
    out[:used] = arr[:used]
    return out
