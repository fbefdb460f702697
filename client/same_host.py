"""The async client's same-host reads: the namespace's shared-memory arena mapped from this
host, FetchDescriptors under leases, and fetches gathered from the mapping (a mixin of
AsyncKVStoreClient; needs torch, imported on first use)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from client import wire
from client.errors import SharedMemoryUnavailable
from client.options import ClientOptions
from client.shard import Shard
from client.types import FetchedClusters, FetchRequest
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

if TYPE_CHECKING:
    from client.descriptors import DescriptorBatch
    from client.shm import ArenaReader

log = logging.getLogger("client")


class _Client(Protocol):
    """What the mixin uses of AsyncKVStoreClient."""

    options: ClientOptions
    _shards: list[Shard]
    _torch_out: bool
    _arena: ArenaReader | None
    _arena_checked: bool
    _done_leases: list[int]
    _lease_lock: threading.Lock

    @property
    def namespace(self) -> str: ...

    async def _call(
        self,
        shard: Shard,
        fn: Callable[[float], Awaitable[Any]],
        idempotent: bool,
        timeout_s: float | None,
        sequence_ids: Sequence[str] = (),
    ) -> Any: ...

    def _unary(
        self, shard: Shard, method: str, request: Any
    ) -> Callable[[float], Awaitable[Any]]: ...

    def check_requests(self, requests: list[FetchRequest]) -> list[Any]: ...

    async def shared_arena(self) -> ArenaReader | None: ...

    async def fetch_descriptors(
        self,
        requests: list[FetchRequest],
        lease_ttl_s: float | None = None,
        timeout_s: float | None = None,
    ) -> DescriptorBatch: ...

    def descriptor_request(
        self,
        requests: list[FetchRequest],
        lease_ttl_s: float | None,
        whole_heads: bool = False,
    ) -> pb.FetchDescriptorsRequest: ...

    def done_with_lease(self, lease_id: int) -> None: ...


class SameHostReads:
    """Mixin of AsyncKVStoreClient (its state is set up there)."""

    _arena: ArenaReader | None
    _arena_checked: bool
    _done_leases: list[int]
    _lease_lock: threading.Lock

    async def _fetch_shared(
        self: _Client, arena: ArenaReader, requests: list[FetchRequest], timeout_s: float | None
    ) -> list[FetchedClusters]:
        import torch

        batch = await self.fetch_descriptors(requests, timeout_s=timeout_s)
        out = []
        for d in batch.entries:
            keys, values = arena.gather_cpu(d)
            offsets = torch.from_numpy(d.cluster_offsets.copy())
            if not self._torch_out:
                keys, values, offsets = (_numpy(t) for t in (keys, values, offsets))
            out.append(FetchedClusters(keys, values, offsets))
        arena.verify(batch)
        self.done_with_lease(batch.lease_id)
        return out

    async def shared_arena(self: _Client) -> ArenaReader | None:
        """The mapped arena of a same-host single store, or None (remote, sharded, shm off,
        torch not installed). shared_memory="require" raises SharedMemoryUnavailable instead."""
        if not self._arena_checked:
            self._arena_checked = True
            try:
                if len(self._shards) != 1:
                    raise SharedMemoryUnavailable("sharded clients stream (one arena per store)")
                try:
                    from client import shm
                except ImportError as exc:
                    raise SharedMemoryUnavailable(f"same-host reads need torch ({exc})") from None
                shard = self._shards[0]
                req = pb.GetArenaRequest(namespace=self.namespace)
                info = await self._call(shard, self._unary(shard, "GetArena", req), True, None)
                self._arena = shm.ArenaReader(info)
            except SharedMemoryUnavailable as exc:
                log.info("shared memory not used: %s", exc)
                self._arena = None
                if self.options.shared_memory == "require":
                    raise
        return self._arena

    async def fetch_descriptors(
        self: _Client,
        requests: list[FetchRequest],
        lease_ttl_s: float | None = None,
        timeout_s: float | None = None,
    ) -> DescriptorBatch:
        """Where the requested clusters lie in the mapped arena, under a new lease. Leases
        handed to `done_with_lease` are released by this call (no extra RPC)."""
        arena = await self.shared_arena()
        if arena is None:
            raise SharedMemoryUnavailable("no shared arena for this client")
        shard = self._shards[0]
        req = self.descriptor_request(requests, lease_ttl_s)
        ids = [r.sequence_id for r in requests]
        resp = await self._call(
            shard, self._unary(shard, "FetchDescriptors", req), True, timeout_s, ids
        )
        return arena.decode(resp)

    def descriptor_request(
        self: _Client,
        requests: list[FetchRequest],
        lease_ttl_s: float | None,
        whole_heads: bool = False,
    ) -> pb.FetchDescriptorsRequest:
        """The compact FetchDescriptors request, carrying the finished leases to release."""
        ids = self.check_requests(requests)
        ttl = self.options.lease_ttl_s if lease_ttl_s is None else lease_ttl_s
        with self._lease_lock:
            release: list[int] = self._done_leases
            self._done_leases = []
        return wire.descriptor_request(self.namespace, requests, ids, ttl, release, whole_heads)

    def done_with_lease(self: _Client, lease_id: int) -> None:
        """Mark a lease finished; it is released with the next FetchDescriptors call.
        Thread-safe (the blocking SDK calls it from its caller's thread)."""
        with self._lease_lock:
            self._done_leases.append(lease_id)

    async def release_leases(self: _Client, timeout_s: float | None = None) -> int:
        """Release finished leases now (otherwise the next FetchDescriptors does it)."""
        if not self._done_leases or len(self._shards) != 1:
            return 0
        shard = self._shards[0]
        with self._lease_lock:
            req = pb.ReleaseLeasesRequest(lease_ids=self._done_leases, namespace=self.namespace)
            self._done_leases = []
        resp = await self._call(shard, self._unary(shard, "ReleaseLeases", req), True, timeout_s)
        return int(resp.released)


def _numpy(t: Any) -> Any:
    """A CPU torch tensor as numpy (bf16 as its uint16 bits)."""
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view("uint16")
    return t.numpy()
