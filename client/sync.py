"""KVStoreClient: the blocking SDK, a thin wrapper running AsyncKVStoreClient on a private
event-loop thread (one implementation of retries, sharding and framing for both APIs)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from client.aio import AsyncKVStoreClient
from client.errors import KVStoreError, SharedMemoryUnavailable
from client.options import ClientOptions
from client.retry import call_with_retry_sync
from client.types import (
    ClusterSegment,
    FetchedClusters,
    FetchRequest,
    SearchQuery,
    SearchResult,
    SequenceGeometry,
    SequenceInfo,
    StoreStats,
)

if TYPE_CHECKING:
    from client.descriptors import DescriptorBatch
    from client.shm import ArenaReader

T = TypeVar("T")


class KVStoreClient:
    """Blocking SDK with the same methods and arguments as AsyncKVStoreClient:
    `KVStoreClient("host:port", ClientOptions(namespace="tenant-a"))`."""

    def __init__(self, target: str | Sequence[str], options: ClientOptions | None = None) -> None:
        self._arena: ArenaReader | None = None
        self._arena_known = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="wavekv-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncKVStoreClient:
            return AsyncKVStoreClient(target, options)

        try:
            self._aio = self._run(make())
        except BaseException:
            self._shutdown_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def options(self) -> ClientOptions:
        return self._aio.options

    @property
    def namespace(self) -> str:
        return self._aio.namespace

    @property
    def targets(self) -> list[str]:
        return self._aio.targets

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """See AsyncKVStoreClient.wait_ready (StoreNotReadyError after timeout_s)."""
        self._run(self._aio.wait_ready(timeout_s))

    def create_sequence(
        self, sequence_id: str, geometry: SequenceGeometry, timeout_s: float | None = None
    ) -> SequenceInfo:
        return self._run(self._aio.create_sequence(sequence_id, geometry, timeout_s))

    def put_segments(
        self, sequence_id: str, segments: list[ClusterSegment], timeout_s: float | None = None
    ) -> list[int]:
        return self._run(self._aio.put_segments(sequence_id, segments, timeout_s))

    def search_clusters(
        self,
        queries: list[SearchQuery],
        k: int,
        scoring: str = "gqa_softmax",
        timeout_s: float | None = None,
    ) -> list[SearchResult]:
        return self._run(self._aio.search_clusters(queries, k, scoring, timeout_s))

    def fetch_clusters(
        self, requests: list[FetchRequest], timeout_s: float | None = None
    ) -> list[FetchedClusters]:
        return self._run(self._aio.fetch_clusters(requests, timeout_s))

    def shared_arena(self) -> ArenaReader | None:
        """The mapped arena of a same-host store, or None (see AsyncKVStoreClient)."""
        if not self._arena_known:
            self._arena = self._run(self._aio.shared_arena())
            self._arena_known = True
        return self._arena

    def fetch_descriptors(
        self,
        requests: list[FetchRequest],
        lease_ttl_s: float | None = None,
        timeout_s: float | None = None,
        whole_heads: bool = False,
    ) -> DescriptorBatch:
        """Same as AsyncKVStoreClient.fetch_descriptors, as one blocking gRPC call from this
        thread (no hop through the event-loop thread: this is the per-layer hot call).
        `whole_heads`: describe every cluster of each request's head (requests carry no ids;
        `DescriptorBatch.whole_heads` is False when the store predates this)."""
        arena = self.shared_arena()
        if arena is None:
            raise SharedMemoryUnavailable("no shared arena for this client")
        req = self._aio.descriptor_request(requests, lease_ttl_s, whole_heads)
        shard = self._aio._shards[0]
        stub = shard.sync_stub()
        try:
            resp = call_with_retry_sync(
                lambda t: stub.FetchDescriptors(req, timeout=t, metadata=shard.metadata),
                self._aio.options.retry,
                True,
                shard.target,
                timeout_s or self._aio.timeout_s,
                shard.sync_channel(),
            )
        except KVStoreError as err:
            raise self._aio._tracker.restarted(err, [r.sequence_id for r in requests]) from None
        return arena.decode(resp)

    def done_with_lease(self, lease_id: int) -> None:
        self._aio.done_with_lease(lease_id)

    def watch_connection(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call `callback(False)` whenever the blocking channel to the (single) store leaves
        READY (the connection dropped: store gone or restarted), `callback(True)` when it is
        READY; returns the function that stops watching."""
        shard = self._aio._shards[0]

        def changed(state: grpc.ChannelConnectivity) -> None:
            callback(state == grpc.ChannelConnectivity.READY)

        shard.subscribe_sync(changed)
        return lambda: shard.unsubscribe_sync(changed)

    def release_leases(self, timeout_s: float | None = None) -> int:
        return self._run(self._aio.release_leases(timeout_s))

    def delete_sequence(self, sequence_id: str, timeout_s: float | None = None) -> int:
        return self._run(self._aio.delete_sequence(sequence_id, timeout_s))

    def get_sequence(self, sequence_id: str, timeout_s: float | None = None) -> SequenceInfo:
        return self._run(self._aio.get_sequence(sequence_id, timeout_s))

    def list_sequences(self, timeout_s: float | None = None) -> list[SequenceInfo]:
        return self._run(self._aio.list_sequences(timeout_s))

    def renew_sequences(self, sequence_ids: list[str], timeout_s: float | None = None) -> list[str]:
        return self._run(self._aio.renew_sequences(sequence_ids, timeout_s))

    def get_stats(self, timeout_s: float | None = None) -> StoreStats:
        return self._run(self._aio.get_stats(timeout_s))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._aio.close())
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> KVStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
