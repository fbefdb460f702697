"""WaveKV client SDK: typed sync and async clients for the KV store service.

Needs numpy and grpcio only; results are torch tensors when torch is installed (numpy arrays
otherwise). The same-host data plane (ArenaReader, DescriptorCache, ...) needs torch and is
imported on first use.
"""

from typing import Any

from client.aio import AsyncKVStoreClient
from client.errors import (
    AlreadyExistsError,
    CapacityError,
    DeadlineExceededError,
    FailedPreconditionError,
    FatalError,
    InvalidArgumentError,
    KVStoreError,
    NotFoundError,
    PermissionDeniedError,
    RetryableError,
    SharedMemoryUnavailable,
    StaleDescriptorError,
    StoreNotReadyError,
    StoreRestartedError,
    UnauthenticatedError,
    UnavailableError,
)
from client.options import ClientOptions
from client.retry import RetryPolicy
from client.sync import KVStoreClient
from client.types import (
    ClusterSegment,
    FetchedClusters,
    FetchRequest,
    RpcStat,
    SearchQuery,
    SearchResult,
    SequenceGeometry,
    SequenceInfo,
    StoreStats,
)

_NEEDS_TORCH = {
    "ArenaReader": "client.shm",
    "BadDescriptorError": "client.descriptors",
    "DescriptorBatch": "client.descriptors",
    "ResolveFallback": "client.descriptors",
    "DescriptorCache": "client.resolver",
    "ResolverConfig": "client.resolver",
    "gather_kernel": "client.gather_kernel",
}


def __getattr__(name: str) -> Any:
    """The same-host data plane, imported on first use (it needs torch)."""
    module = _NEEDS_TORCH.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    import importlib

    loaded = importlib.import_module(module)
    return loaded if name == "gather_kernel" else getattr(loaded, name)


__all__ = [
    "AlreadyExistsError",
    "ArenaReader",
    "AsyncKVStoreClient",
    "BadDescriptorError",
    "CapacityError",
    "ClientOptions",
    "ClusterSegment",
    "DeadlineExceededError",
    "DescriptorBatch",
    "DescriptorCache",
    "FailedPreconditionError",
    "FatalError",
    "FetchRequest",
    "FetchedClusters",
    "InvalidArgumentError",
    "KVStoreClient",
    "KVStoreError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResolveFallback",
    "ResolverConfig",
    "RetryPolicy",
    "RetryableError",
    "RpcStat",
    "SearchQuery",
    "SearchResult",
    "SequenceGeometry",
    "SequenceInfo",
    "SharedMemoryUnavailable",
    "StaleDescriptorError",
    "StoreNotReadyError",
    "StoreRestartedError",
    "StoreStats",
    "UnauthenticatedError",
    "UnavailableError",
]
