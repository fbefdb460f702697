"""WaveKV client SDK: typed sync and async clients for the KV store service."""

from client.aio import AsyncKVStoreClient
from client.descriptors import (
    BadDescriptorError,
    DescriptorBatch,
    ResolveFallback,
    StaleDescriptorError,
)
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
    UnauthenticatedError,
    UnavailableError,
)
from client.resolver import DescriptorCache, ResolverConfig
from client.retry import RetryPolicy
from client.shm import ArenaReader, SharedMemoryUnavailable
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

__all__ = [
    "AlreadyExistsError",
    "ArenaReader",
    "AsyncKVStoreClient",
    "BadDescriptorError",
    "CapacityError",
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
    "StoreStats",
    "UnauthenticatedError",
    "UnavailableError",
]
