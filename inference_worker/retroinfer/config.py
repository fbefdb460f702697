"""RetroInfer configuration: the reference implementation's defaults, validated at construction."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# centroid_format -> storage dtype (None: the model dtype; int8: with one fp32 scale per
# centroid, index.quantize_centroids)
CENTROID_FORMATS: dict[str, torch.dtype | None] = {
    "model": None,
    "fp8_e4m3": torch.float8_e4m3fn,
    "int8": torch.int8,
}


@dataclass(frozen=True, slots=True)
class RetroInferConfig:
    """Knobs of the wave index, tripartite attention and wave buffer.

    Defaults are those of the RetroInfer reference code (see docs/retroinfer.md).
    """

    sink_tokens: int = 4  # first prompt tokens always attended exactly (steady zone)
    window_tokens: int = 64  # last prompt tokens always attended exactly (steady zone)
    retrieval_budget: float = 0.018  # fraction of clusters attended exactly
    # Departure from the paper (fraction only): n_ret >= this many clusters. Below ~57K tokens
    # 1.8% is few clusters (3 at 3K tokens, 37 at 32K); 64 is the smallest floor measured to
    # give >= 98% teacher-forced agreement at 3K and 6K (docs/retroinfer.md). 0 = the paper.
    min_retrieval_clusters: int = 64
    estimation_budget: float = 0.232  # fraction of clusters estimated from centroids
    cluster_size: int = 16  # average tokens per cluster (C ~= clustered tokens / cluster_size)
    segment_tokens: int = 8192  # tokens per k-means segment (clusters never span segments)
    page_tokens: int = 8  # vectors per wave-buffer page
    kmeans_iterations: int = 10  # in-segment iterations + 1 final global assignment
    update_tokens: int = 1024  # generated tokens clustered per index update
    update_clusters: int = 64  # clusters per update segment
    cache_clusters_factor: float = 3.0  # cache = factor * n_ret clusters (if cache_ratio is None)
    cache_ratio: float | None = None  # cache = cache_ratio * C clusters (paper: 0.05)
    exec_buffer_factor: float = (
        4.0  # execution buffer >= max(exec_buffer_min, factor*n_ret) clusters
    )
    exec_buffer_min_clusters: int = 32
    final_assign_chunk: int = (
        16384  # tokens per chunk of the final global assignment (memory bound)
    )
    # Departure from the paper (storage only): the centroids the ranking scans are int8 with
    # one fp32 scale per centroid, about half the bytes of the model dtype for the scan (half
    # of the ideal step's bytes; H100, 128K x 16: 0.273 vs 0.305 ms per layer-step). Measured
    # on the default model's real keys against fp32 centroids
    # (benchmarks/results/centroid_precision_cpu.json): retrieved clusters kept 0.991 (bf16
    # storage 0.9965, fp8 0.949), output relative difference 4.5e-3 (bf16 4.5e-3, fp8 1.2e-2);
    # the RULER-style CPU eval's 72 generations are identical with int8, bf16 and fp8 centroids
    # (2026-11-27 code; benchmarks/results/eval/centroids_cpu_* at commit 0f2ce5c).
    # "model": the model dtype, as the paper; "fp8_e4m3".
    centroid_format: str = "int8"
    defer_misses: bool = False  # opt-in: estimate missed clusters now, admit them next step
    # with defer_misses, the first decode steps after prefill still fetch exactly: the wave
    # buffer starts empty, so deferring there would estimate nearly every retrieved cluster
    defer_warmup_steps: int = 1

    def __post_init__(self) -> None:
        _check_int("sink_tokens", self.sink_tokens, 0)
        _check_int("window_tokens", self.window_tokens, 0)
        _check_int("cluster_size", self.cluster_size, 1)
        _check_int("segment_tokens", self.segment_tokens, 1)
        _check_int("page_tokens", self.page_tokens, 1)
        _check_int("kmeans_iterations", self.kmeans_iterations, 1)
        _check_int("update_tokens", self.update_tokens, 1)
        _check_int("update_clusters", self.update_clusters, 1)
        _check_int("exec_buffer_min_clusters", self.exec_buffer_min_clusters, 1)
        _check_int("final_assign_chunk", self.final_assign_chunk, 1)
        _check_int("min_retrieval_clusters", self.min_retrieval_clusters, 0)
        _check_int("defer_warmup_steps", self.defer_warmup_steps, 0)
        if self.centroid_format not in CENTROID_FORMATS:
            raise ValueError(
                f"centroid_format must be one of {sorted(CENTROID_FORMATS)}, got "
                f"{self.centroid_format!r}"
            )
        _check_fraction("retrieval_budget", self.retrieval_budget)
        _check_fraction("estimation_budget", self.estimation_budget)
        if self.retrieval_budget + self.estimation_budget > 1.0 + 1e-9:
            raise ValueError(
                f"retrieval_budget + estimation_budget must be <= 1, got "
                f"{self.retrieval_budget!r} + {self.estimation_budget!r}"
            )
        if self.update_clusters > self.update_tokens:
            raise ValueError(
                f"update_clusters must be <= update_tokens, got {self.update_clusters!r} > "
                f"{self.update_tokens!r}"
            )
        if not (math.isfinite(self.cache_clusters_factor) and self.cache_clusters_factor >= 0):
            raise ValueError(
                f"cache_clusters_factor must be finite and >= 0, got {self.cache_clusters_factor!r}"
            )
        if self.cache_ratio is not None:
            _check_fraction("cache_ratio", self.cache_ratio)
        if not (math.isfinite(self.exec_buffer_factor) and self.exec_buffer_factor >= 1):
            raise ValueError(
                f"exec_buffer_factor must be finite and >= 1, got {self.exec_buffer_factor!r}"
            )

    @property
    def index_threshold(self) -> int:
        """Prompts shorter than this get no index at prefill (dense attention)."""
        return self.sink_tokens + self.window_tokens + self.update_tokens

    def num_segments(self, prompt_len: int) -> int:
        """n_seg = max(round(L / segment_tokens), 1)."""
        return max(round(prompt_len / self.segment_tokens), 1)

    def num_clusters(self, clustered_tokens: int, num_segments: int) -> int:
        """C ~= N / cluster_size rounded to a multiple of lcm(8, n_seg), at least n_seg."""
        step = math.lcm(8, num_segments)
        clusters = max(round(clustered_tokens / self.cluster_size / step), 1) * step
        if clusters > clustered_tokens:  # tiny inputs: at most one cluster per token
            clusters = max(clustered_tokens // num_segments, 1) * num_segments
        return clusters

    def retrieval_clusters(self, num_clusters: int) -> int:
        """n_ret = max(round(retrieval_budget * C), min_retrieval_clusters, 1), at most C.

        The one place n_ret is computed: the torch and Triton steps, the CUDA-graph widths, the
        wave-buffer cache and execution-buffer sizes all call this."""
        if num_clusters == 0:
            return 0
        n_ret = max(round(self.retrieval_budget * num_clusters), self.min_retrieval_clusters, 1)
        return min(n_ret, num_clusters)

    def estimation_clusters(self, num_clusters: int) -> int:
        """n_est = min(round(estimation_budget * C), C - n_ret)."""
        n_ret = self.retrieval_clusters(num_clusters)
        return min(round(self.estimation_budget * num_clusters), num_clusters - n_ret)

    def cache_clusters(self, num_clusters: int) -> int:
        """Wave-buffer cache size in clusters per (sequence, kv_head)."""
        if self.cache_ratio is not None:
            return round(self.cache_ratio * num_clusters)
        return round(self.cache_clusters_factor * self.retrieval_clusters(num_clusters))

    def centroid_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype centroids are stored in for a model of `model_dtype`."""
        return CENTROID_FORMATS[self.centroid_format] or model_dtype

    def exec_buffer_clusters(self, num_clusters: int) -> int:
        """Execution-buffer size (retrieved part) in clusters: max(min, factor * n_ret)."""
        n_ret = self.retrieval_clusters(num_clusters)
        return max(self.exec_buffer_min_clusters, math.ceil(self.exec_buffer_factor * n_ret))


@dataclass(frozen=True, slots=True)
class StepOptions:
    """How a RetroInferLayer runs its decode step (the method's options: RetroInferConfig)."""

    # the Triton step (fast_step.py): None = where the kernels run (CUDA with triton, or the
    # CPU interpreter under TRITON_INTERPRET=1), else the torch reference (reference.py);
    # False = always the reference (tests compare the two)
    kernels: bool | None = None
    # StepStats.selection holds each step's clusters (retrieved / ranked / estimated ids)
    record_selection: bool = False
    # benchmarks: replaces the step's query, q [R, G, D] -> q (called with the layer index,
    # inside a captured step too): synthetic query streams with a chosen locality
    query_transform: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    # retrieval quality (mass.py): every mass_every-th decode step of a layer also measures
    # where the exact attention mass falls (steady / retrieved / estimated / dropped; a full
    # read of the layer's clusters from the source, that step not captured); 0 = never
    mass_every: int = 0

    def __post_init__(self) -> None:
        _check_int("mass_every", self.mass_every, 0)


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
