"""Fused Triton kernels of the RetroInfer decode step, each with its torch reference.

Every public function takes `use_triton`: None picks Triton on CUDA when it is importable
(`kernels_available`), False always runs the torch reference (CPU always does). Triton is
imported lazily, so this package imports on machines without it.
"""

from __future__ import annotations

from .availability import kernels_available
from .decode_attention import decode_attention, decode_attention_reference
from .estimate import estimate_partials, estimate_partials_reference
from .gather import copy_runs, copy_runs_reference
from .partials import combine_partials
from .rank import RankSelection, rank_select, rank_select_reference

__all__ = [
    "RankSelection",
    "combine_partials",
    "copy_runs",
    "copy_runs_reference",
    "decode_attention",
    "decode_attention_reference",
    "estimate_partials",
    "estimate_partials_reference",
    "kernels_available",
    "rank_select",
    "rank_select_reference",
]
