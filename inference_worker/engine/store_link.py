"""The engine's link to the KV store: the interface and the in-process link.

Two implementations of one interface (architecture.md, "Boundaries"):
- `InProcessStoreLink` (here): segments stay in this process (tests, single-process runs);
- `GrpcStoreLink` (grpc_link.py): the real kvstore_server through the client SDK.
Both are `ClusterSource`s, so a RetroInferLayer reads its misses from either.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from client import SequenceGeometry
from inference_worker.retroinfer import (
    ClusterSource,
    FetchedBatch,
    IndexSegment,
    InProcessClusterSource,
)
from inference_worker.retroinfer.kernels.cluster_table import ClusterRows

TORCH_TO_STORE_DTYPE = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
}
STORE_TO_TORCH_DTYPE = {name: dtype for dtype, name in TORCH_TO_STORE_DTYPE.items()}


class StoreRestartedError(RuntimeError):
    """The store lost this request's state (its incarnation id changed): not retryable."""


@dataclass(slots=True)
class LinkCounters:
    """Traffic through a link, summed over its lifetime (the engine takes differences)."""

    fetch_rpcs: int = 0  # fetch calls (a locally resolved one makes no RPC: see local_fetches)
    fetched_bytes: int = 0
    put_rpcs: int = 0
    uploaded_bytes: int = 0
    local_fetches: int = 0  # same-host fetches resolved from the descriptor cache (no RPC)

    def snapshot(self) -> LinkCounters:
        return LinkCounters(
            self.fetch_rpcs,
            self.fetched_bytes,
            self.put_rpcs,
            self.uploaded_bytes,
            self.local_fetches,
        )

    def since(self, before: LinkCounters) -> dict[str, int]:
        return {
            "store_fetch_rpcs": self.fetch_rpcs - before.fetch_rpcs,
            "store_fetched_bytes": self.fetched_bytes - before.fetched_bytes,
            "store_put_rpcs": self.put_rpcs - before.put_rpcs,
            "store_uploaded_bytes": self.uploaded_bytes - before.uploaded_bytes,
            "store_local_fetches": self.local_fetches - before.local_fetches,
        }


class StoreLink(ClusterSource):
    """What the engine needs from a store (sequence ids are the store's ids, strings): a
    ClusterSource for the layers' misses, plus the sequences' life cycle."""

    counters: LinkCounters

    @abc.abstractmethod
    def open(self, sequence_ids: Sequence[str], geometry: SequenceGeometry) -> None: ...

    @abc.abstractmethod
    def upload(self, sequence_ids: Sequence[str], segment: IndexSegment) -> None:
        """Queue a segment of B sequences (row b belongs to sequence_ids[b])."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Wait until every queued upload is stored; raise the first upload error."""

    @abc.abstractmethod
    def release(self, sequence_ids: Sequence[str]) -> None:
        """Delete the sequences; never raises (it runs on failure paths)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def reconnect(self) -> None:
        """After the store was lost (restarted, or its sequences gone): reattach to it, so
        that sequences can be created anew. The in-process store is never lost."""


def _segment_bytes(segment: IndexSegment) -> int:
    return sum(
        t.numel() * t.element_size()
        for t in (
            segment.centroids,
            segment.sizes,
            segment.value_sums,
            segment.keys,
            segment.values,
            segment.offsets,
        )
    )


class InProcessStoreLink(StoreLink):
    """Keeps segments in this process via InProcessClusterSource, whose capabilities it
    declares (device-visible cluster rows, graph-safe fetches): on the model's device, or with
    `host_memory` the K/V in pinned host memory (where a same-host store keeps them; the GPU
    reads misses over PCIe)."""

    def __init__(self, host_memory: bool = False) -> None:
        self.source = InProcessClusterSource()
        self.counters = LinkCounters()
        self.host_memory = host_memory

    def open(self, sequence_ids: Sequence[str], geometry: SequenceGeometry) -> None:
        del sequence_ids, geometry  # nothing to allocate

    def upload(self, sequence_ids: Sequence[str], segment: IndexSegment) -> None:
        if self.host_memory and segment.keys.is_cuda:
            segment = dataclasses.replace(
                segment,
                keys=segment.keys.cpu().pin_memory(),
                values=segment.values.cpu().pin_memory(),
            )
        self.source.put(sequence_ids, segment)
        self.counters.put_rpcs += 1
        self.counters.uploaded_bytes += _segment_bytes(segment)

    def flush(self) -> None:
        return None

    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable],
        cluster_ids: torch.Tensor,
        max_tokens: int,
    ) -> FetchedBatch:
        batch = self.source.fetch(layer, sequence_ids, cluster_ids, max_tokens)
        self.counters.fetch_rpcs += 1
        self.counters.fetched_bytes += (
            int(batch.offsets[..., -1].sum())
            * 2
            * (batch.keys.shape[-1] * batch.keys.element_size())
        )
        return batch

    def cluster_base(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.source.cluster_base()

    def cluster_rows(self, layer: int, sequence_id: Hashable) -> ClusterRows | None:
        return self.source.cluster_rows(layer, sequence_id)

    def graph_safe(self) -> bool:
        return self.source.graph_safe()

    def release(self, sequence_ids: Sequence[str]) -> None:
        self.source.drop(sequence_ids)

    def close(self) -> None:
        return None
