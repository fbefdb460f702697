"""What both k-means paths share: the result type, the segment bounds and the score matmuls."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Upper bound on elements of one similarity tensor: the flattened (row, segment) batch is split
# into chunks below it to bound memory (this is a memory limit, not a per-head loop).
_SIMILARITY_BUDGET = 1 << 30


def matmul_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [R, M, D] @ b[R, N, D]^T -> [R, M, N] float32 (fp32 accumulate and output)."""
    if a.dtype == torch.float32:
        return torch.bmm(a, b.transpose(1, 2))
    if a.is_cuda:
        return torch.bmm(a, b.transpose(1, 2), out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float().transpose(1, 2))


def assignment_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Scores used only for argmax assignment: a [R, M, D] @ b [R, N, D]^T in the input dtype on
    CUDA (half the memory traffic of fp32 scores), fp32 elsewhere."""
    if a.is_cuda:
        return torch.bmm(a, b.transpose(1, 2))
    return matmul_scores(a, b)


def segment_bounds(num_tokens: int, num_segments: int, device: torch.device) -> torch.Tensor:
    """Start offsets of near-equal contiguous segments: [n_seg + 1] int64."""
    s = torch.arange(num_segments + 1, device=device, dtype=torch.int64)
    return (s * num_tokens) // num_segments


@dataclass(slots=True)
class Clustering:
    """Result of clustering R rows of N keys into C clusters each."""

    labels: torch.Tensor  # [R, N] int64 in [0, C)
    centroids: torch.Tensor  # [R, C, D] fp32 unnormalised member mean + row mean
    sizes: torch.Tensor  # [R, C] int64
    order: torch.Tensor  # [R, N] int64 cluster-major token order (members in token order)
    offsets: torch.Tensor  # [R, C + 1] int64 (offsets[:, 0] = 0, offsets[:, -1] = N)
    sorted_keys: torch.Tensor  # [R, N, D] keys in cluster-major order (keys' dtype)
