from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]

class Scoring(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORING_GQA_SOFTMAX: _ClassVar[Scoring]
    SCORING_INNER_PRODUCT: _ClassVar[Scoring]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT32: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
SCORING_GQA_SOFTMAX: Scoring
SCORING_INNER_PRODUCT: Scoring

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Geometry(_message.Message):
    __slots__ = ("num_layers", "num_kv_heads", "head_dim", "dtype")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: DType
    def __init__(self, num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class SequenceInfo(_message.Message):
    __slots__ = ("namespace", "sequence_id", "geometry", "incarnation_id", "bytes_used", "num_tokens", "num_clusters", "num_segments", "created_unix_s", "ttl_s")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    NUM_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    sequence_id: str
    geometry: Geometry
    incarnation_id: str
    bytes_used: int
    num_tokens: int
    num_clusters: int
    num_segments: int
    created_unix_s: float
    ttl_s: float
    def __init__(self, namespace: _Optional[str] = ..., sequence_id: _Optional[str] = ..., geometry: _Optional[_Union[Geometry, _Mapping]] = ..., incarnation_id: _Optional[str] = ..., bytes_used: _Optional[int] = ..., num_tokens: _Optional[int] = ..., num_clusters: _Optional[int] = ..., num_segments: _Optional[int] = ..., created_unix_s: _Optional[float] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CreateSequenceRequest(_message.Message):
    __slots__ = ("namespace", "sequence_id", "geometry")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    sequence_id: str
    geometry: Geometry
    def __init__(self, namespace: _Optional[str] = ..., sequence_id: _Optional[str] = ..., geometry: _Optional[_Union[Geometry, _Mapping]] = ...) -> None: ...

class CreateSequenceResponse(_message.Message):
    __slots__ = ("info", "created")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    info: SequenceInfo
    created: bool
    def __init__(self, info: _Optional[_Union[SequenceInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class SegmentHeader(_message.Message):
    __slots__ = ("namespace", "sequence_id", "layer", "kv_head", "centroids", "sizes", "value_sums", "offsets", "keys", "values")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    VALUE_SUMS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    sequence_id: str
    layer: int
    kv_head: int
    centroids: Tensor
    sizes: Tensor
    value_sums: Tensor
    offsets: Tensor
    keys: Tensor
    values: Tensor
    def __init__(self, namespace: _Optional[str] = ..., sequence_id: _Optional[str] = ..., layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., centroids: _Optional[_Union[Tensor, _Mapping]] = ..., sizes: _Optional[_Union[Tensor, _Mapping]] = ..., value_sums: _Optional[_Union[Tensor, _Mapping]] = ..., offsets: _Optional[_Union[Tensor, _Mapping]] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SegmentData(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class PutSegmentsRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: SegmentHeader
    data: SegmentData
    def __init__(self, header: _Optional[_Union[SegmentHeader, _Mapping]] = ..., data: _Optional[_Union[SegmentData, _Mapping]] = ...) -> None: ...

class SegmentAck(_message.Message):
    __slots__ = ("layer", "kv_head", "first_cluster_id", "num_clusters")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    FIRST_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    kv_head: int
    first_cluster_id: int
    num_clusters: int
    def __init__(self, layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., first_cluster_id: _Optional[int] = ..., num_clusters: _Optional[int] = ...) -> None: ...

class PutSegmentsResponse(_message.Message):
    __slots__ = ("acks", "info")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[SegmentAck]
    info: SequenceInfo
    def __init__(self, acks: _Optional[_Iterable[_Union[SegmentAck, _Mapping]]] = ..., info: _Optional[_Union[SequenceInfo, _Mapping]] = ...) -> None: ...

class SearchEntry(_message.Message):
    __slots__ = ("sequence_id", "layer", "kv_head", "queries")
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    sequence_id: str
    layer: int
    kv_head: int
    queries: Tensor
    def __init__(self, sequence_id: _Optional[str] = ..., layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., queries: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SearchClustersRequest(_message.Message):
    __slots__ = ("namespace", "entries", "k", "scoring")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    entries: _containers.RepeatedCompositeFieldContainer[SearchEntry]
    k: int
    scoring: Scoring
    def __init__(self, namespace: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[SearchEntry, _Mapping]]] = ..., k: _Optional[int] = ..., scoring: _Optional[_Union[Scoring, str]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("cluster_ids", "scores")
    CLUSTER_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    cluster_ids: Tensor
    scores: Tensor
    def __init__(self, cluster_ids: _Optional[_Union[Tensor, _Mapping]] = ..., scores: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SearchClustersResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class FetchEntry(_message.Message):
    __slots__ = ("sequence_id", "layer", "kv_head", "cluster_ids")
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IDS_FIELD_NUMBER: _ClassVar[int]
    sequence_id: str
    layer: int
    kv_head: int
    cluster_ids: Tensor
    def __init__(self, sequence_id: _Optional[str] = ..., layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., cluster_ids: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FetchClustersRequest(_message.Message):
    __slots__ = ("namespace", "entries")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    entries: _containers.RepeatedCompositeFieldContainer[FetchEntry]
    def __init__(self, namespace: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[FetchEntry, _Mapping]]] = ...) -> None: ...

class FetchLayout(_message.Message):
    __slots__ = ("dtype", "head_dim", "num_rows", "keys_offset", "values_offset", "cluster_offsets")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    KEYS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    VALUES_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    head_dim: int
    num_rows: int
    keys_offset: int
    values_offset: int
    cluster_offsets: Tensor
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., head_dim: _Optional[int] = ..., num_rows: _Optional[int] = ..., keys_offset: _Optional[int] = ..., values_offset: _Optional[int] = ..., cluster_offsets: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FetchHeader(_message.Message):
    __slots__ = ("layouts", "total_bytes")
    LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    layouts: _containers.RepeatedCompositeFieldContainer[FetchLayout]
    total_bytes: int
    def __init__(self, layouts: _Optional[_Iterable[_Union[FetchLayout, _Mapping]]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class FetchChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class FetchClustersResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: FetchHeader
    chunk: FetchChunk
    def __init__(self, header: _Optional[_Union[FetchHeader, _Mapping]] = ..., chunk: _Optional[_Union[FetchChunk, _Mapping]] = ...) -> None: ...

class DeleteSequenceRequest(_message.Message):
    __slots__ = ("namespace", "sequence_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    sequence_id: str
    def __init__(self, namespace: _Optional[str] = ..., sequence_id: _Optional[str] = ...) -> None: ...

class DeleteSequenceResponse(_message.Message):
    __slots__ = ("bytes_freed",)
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    bytes_freed: int
    def __init__(self, bytes_freed: _Optional[int] = ...) -> None: ...

class GetSequenceRequest(_message.Message):
    __slots__ = ("namespace", "sequence_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    sequence_id: str
    def __init__(self, namespace: _Optional[str] = ..., sequence_id: _Optional[str] = ...) -> None: ...

class ListSequencesRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ListSequencesResponse(_message.Message):
    __slots__ = ("sequences",)
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceInfo]
    def __init__(self, sequences: _Optional[_Iterable[_Union[SequenceInfo, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class RpcStats(_message.Message):
    __slots__ = ("method", "count", "errors", "mean_ms", "p50_ms", "p99_ms", "max_ms")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    method: str
    count: int
    errors: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    def __init__(self, method: _Optional[str] = ..., count: _Optional[int] = ..., errors: _Optional[int] = ..., mean_ms: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("incarnation_id", "bytes_used", "capacity_bytes", "bytes_free", "num_sequences", "num_namespaces", "uptime_s", "rpcs", "reserved_bytes", "namespace")
    INCARNATION_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREE_FIELD_NUMBER: _ClassVar[int]
    NUM_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    NUM_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    RPCS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    incarnation_id: str
    bytes_used: int
    capacity_bytes: int
    bytes_free: int
    num_sequences: int
    num_namespaces: int
    uptime_s: float
    rpcs: _containers.RepeatedCompositeFieldContainer[RpcStats]
    reserved_bytes: int
    namespace: str
    def __init__(self, incarnation_id: _Optional[str] = ..., bytes_used: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., bytes_free: _Optional[int] = ..., num_sequences: _Optional[int] = ..., num_namespaces: _Optional[int] = ..., uptime_s: _Optional[float] = ..., rpcs: _Optional[_Iterable[_Union[RpcStats, _Mapping]]] = ..., reserved_bytes: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class RenewSequencesRequest(_message.Message):
    __slots__ = ("namespace", "sequence_ids")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    sequence_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., sequence_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RenewSequencesResponse(_message.Message):
    __slots__ = ("missing", "ttl_s")
    MISSING_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[str]
    ttl_s: float
    def __init__(self, missing: _Optional[_Iterable[str]] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class GetArenaRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ArenaInfo(_message.Message):
    __slots__ = ("enabled", "arena_id", "directory", "file_prefix", "max_lease_ttl_s")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ARENA_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    FILE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAX_LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    arena_id: str
    directory: str
    file_prefix: str
    max_lease_ttl_s: float
    def __init__(self, enabled: _Optional[bool] = ..., arena_id: _Optional[str] = ..., directory: _Optional[str] = ..., file_prefix: _Optional[str] = ..., max_lease_ttl_s: _Optional[float] = ...) -> None: ...

class FetchDescriptorsRequest(_message.Message):
    __slots__ = ("namespace", "entries", "lease_ttl_s", "release_leases", "packed_entries", "packed_reply", "whole_heads")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASES_FIELD_NUMBER: _ClassVar[int]
    PACKED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PACKED_REPLY_FIELD_NUMBER: _ClassVar[int]
    WHOLE_HEADS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    entries: _containers.RepeatedCompositeFieldContainer[FetchEntry]
    lease_ttl_s: float
    release_leases: _containers.RepeatedScalarFieldContainer[int]
    packed_entries: PackedFetchEntries
    packed_reply: bool
    whole_heads: bool
    def __init__(self, namespace: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[FetchEntry, _Mapping]]] = ..., lease_ttl_s: _Optional[float] = ..., release_leases: _Optional[_Iterable[int]] = ..., packed_entries: _Optional[_Union[PackedFetchEntries, _Mapping]] = ..., packed_reply: _Optional[bool] = ..., whole_heads: _Optional[bool] = ...) -> None: ...

class PackedFetchEntries(_message.Message):
    __slots__ = ("sequence_ids", "layers", "kv_heads", "counts", "cluster_ids")
    SEQUENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IDS_FIELD_NUMBER: _ClassVar[int]
    sequence_ids: _containers.RepeatedScalarFieldContainer[str]
    layers: _containers.RepeatedScalarFieldContainer[int]
    kv_heads: _containers.RepeatedScalarFieldContainer[int]
    counts: bytes
    cluster_ids: bytes
    def __init__(self, sequence_ids: _Optional[_Iterable[str]] = ..., layers: _Optional[_Iterable[int]] = ..., kv_heads: _Optional[_Iterable[int]] = ..., counts: _Optional[bytes] = ..., cluster_ids: _Optional[bytes] = ...) -> None: ...

class EntryDescriptor(_message.Message):
    __slots__ = ("slab", "slab_bytes", "generation", "extent_offset", "keys_offset", "values_offset", "row_bytes", "dtype", "head_dim", "row_starts", "cluster_offsets")
    SLAB_FIELD_NUMBER: _ClassVar[int]
    SLAB_BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    EXTENT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEYS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    VALUES_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ROW_BYTES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    ROW_STARTS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    slab: int
    slab_bytes: int
    generation: int
    extent_offset: int
    keys_offset: int
    values_offset: int
    row_bytes: int
    dtype: DType
    head_dim: int
    row_starts: Tensor
    cluster_offsets: Tensor
    def __init__(self, slab: _Optional[int] = ..., slab_bytes: _Optional[int] = ..., generation: _Optional[int] = ..., extent_offset: _Optional[int] = ..., keys_offset: _Optional[int] = ..., values_offset: _Optional[int] = ..., row_bytes: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., head_dim: _Optional[int] = ..., row_starts: _Optional[_Union[Tensor, _Mapping]] = ..., cluster_offsets: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FetchDescriptorsResponse(_message.Message):
    __slots__ = ("arena_id", "lease_id", "lease_ttl_s", "entries", "packed", "whole_heads")
    ARENA_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    WHOLE_HEADS_FIELD_NUMBER: _ClassVar[int]
    arena_id: str
    lease_id: int
    lease_ttl_s: float
    entries: _containers.RepeatedCompositeFieldContainer[EntryDescriptor]
    packed: PackedDescriptors
    whole_heads: bool
    def __init__(self, arena_id: _Optional[str] = ..., lease_id: _Optional[int] = ..., lease_ttl_s: _Optional[float] = ..., entries: _Optional[_Iterable[_Union[EntryDescriptor, _Mapping]]] = ..., packed: _Optional[_Union[PackedDescriptors, _Mapping]] = ..., whole_heads: _Optional[bool] = ...) -> None: ...

class PackedDescriptors(_message.Message):
    __slots__ = ("table", "counts", "row_starts", "lens")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    ROW_STARTS_FIELD_NUMBER: _ClassVar[int]
    LENS_FIELD_NUMBER: _ClassVar[int]
    table: bytes
    counts: bytes
    row_starts: bytes
    lens: bytes
    def __init__(self, table: _Optional[bytes] = ..., counts: _Optional[bytes] = ..., row_starts: _Optional[bytes] = ..., lens: _Optional[bytes] = ...) -> None: ...

class ReleaseLeasesRequest(_message.Message):
    __slots__ = ("lease_ids", "namespace")
    LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    lease_ids: _containers.RepeatedScalarFieldContainer[int]
    namespace: str
    def __init__(self, lease_ids: _Optional[_Iterable[int]] = ..., namespace: _Optional[str] = ...) -> None: ...

class ReleaseLeasesResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...
