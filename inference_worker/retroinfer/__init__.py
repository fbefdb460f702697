"""RetroInfer core: wave index, tripartite decode attention and wave buffer (pure torch)."""

from .attention import estimate, merge, partial_attention, rank_clusters
from .config import RetroInferConfig, StepOptions
from .graph import LayerGraph
from .index import ClusterMetadata, IndexSegment, build_segment
from .kmeans import segmented_kmeans
from .layer import RetroInferLayer
from .source import ClusterSource, FetchedBatch, InProcessClusterSource
from .stats import StepStats
from .wave_buffer import AdmitResult, WaveBuffer

__all__ = [
    "AdmitResult",
    "ClusterMetadata",
    "ClusterSource",
    "FetchedBatch",
    "InProcessClusterSource",
    "IndexSegment",
    "LayerGraph",
    "RetroInferConfig",
    "RetroInferLayer",
    "StepOptions",
    "StepStats",
    "WaveBuffer",
    "build_segment",
    "estimate",
    "merge",
    "partial_attention",
    "rank_clusters",
    "segmented_kmeans",
]
