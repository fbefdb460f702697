"""Plain SDK types. Arrays may be numpy arrays or torch tensors on input; outputs are torch
tensors when torch is installed, numpy arrays otherwise (`ClientOptions.output`; bf16 as numpy
is its uint16 bit pattern)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wavekv_proto.codec import KV_DTYPE_NAMES

ArrayLike = Any  # numpy.ndarray | torch.Tensor
Output = Any  # torch.Tensor, or numpy.ndarray without torch


@dataclass(slots=True, frozen=True)
class SequenceGeometry:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "bfloat16"  # "float16" | "bfloat16" | "float32"

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if self.dtype not in KV_DTYPE_NAMES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {KV_DTYPE_NAMES}")


@dataclass(slots=True)
class ClusterSegment:
    """One clustered segment of a (layer, kv_head): cluster-major K/V plus metadata."""

    layer: int
    kv_head: int
    centroids: ArrayLike  # [C, D] float32
    sizes: ArrayLike  # [C] int
    value_sums: ArrayLike  # [C, D] float32
    keys: ArrayLike  # [N, D] sequence dtype, cluster-major
    values: ArrayLike  # [N, D] sequence dtype, cluster-major
    offsets: ArrayLike  # [C + 1] int64, offsets[0] = 0, offsets[-1] = N


@dataclass(slots=True)
class SearchQuery:
    sequence_id: str
    layer: int
    kv_head: int
    queries: ArrayLike  # [G, D] float32: the query heads of one GQA group


@dataclass(slots=True)
class SearchResult:
    cluster_ids: Output  # [k] int64, best first
    scores: Output  # [k] float32


@dataclass(slots=True)
class FetchRequest:
    sequence_id: str
    layer: int
    kv_head: int
    cluster_ids: ArrayLike  # [n] int64


@dataclass(slots=True)
class FetchedClusters:
    """Clusters in request order; keys/values are views into one shared payload buffer."""

    keys: Output  # [M, D] sequence dtype
    values: Output  # [M, D] sequence dtype
    offsets: Output  # [n + 1] int64: rows of cluster i are offsets[i]:offsets[i + 1]


@dataclass(slots=True)
class SequenceInfo:
    namespace: str
    sequence_id: str
    geometry: SequenceGeometry
    incarnation_id: str  # changes when the store restarts and stored state was lost
    bytes_used: int
    num_tokens: int
    num_clusters: int
    num_segments: int
    created_unix_s: float
    ttl_s: float = 0.0  # the store drops it after this long without an RPC naming it (0: never)


@dataclass(slots=True)
class RpcStat:
    count: int
    errors: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(slots=True)
class StoreStats:
    """This client's namespace's usage and RPCs; capacity and free bytes are the store's."""

    incarnation_id: str  # comma-joined over shards in sharded mode
    bytes_used: int
    capacity_bytes: int
    bytes_free: int
    num_sequences: int
    num_namespaces: int
    uptime_s: float
    rpcs: dict[str, RpcStat] = field(default_factory=dict)
    per_target: dict[str, StoreStats] = field(default_factory=dict)  # sharded mode only
    reserved_bytes: int = 0  # capacity held by this namespace's puts in flight
