"""WaveKV client SDK: typed sync and async clients for the KV store service."""

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
    UnauthenticatedError,
    UnavailableError,
)
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

__all__ = [
    "AlreadyExistsError",
    "AsyncKVStoreClient",
    "CapacityError",
    "ClusterSegment",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FatalError",
    "FetchRequest",
    "FetchedClusters",
    "InvalidArgumentError",
    "KVStoreClient",
    "KVStoreError",
    "NotFoundError",
    "PermissionDeniedError",
    "RetryPolicy",
    "RetryableError",
    "RpcStat",
    "SearchQuery",
    "SearchResult",
    "SequenceGeometry",
    "SequenceInfo",
    "StoreStats",
    "UnauthenticatedError",
    "UnavailableError",
]
