"""Whether the Triton kernels can run for a device (lazy, optional import of triton)."""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch


@cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run in Triton's CPU interpreter (debugging only)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def kernels_available(device: torch.device | str) -> bool:
    """True when Triton kernels can run on `device` (CUDA with triton installed, or the
    interpreter on CPU when TRITON_INTERPRET=1)."""
    kind = torch.device(device).type
    if not _triton_importable():
        return False
    return kind == "cuda" or (kind == "cpu" and interpreting())


def pick(use_triton: bool | None, *tensors: torch.Tensor) -> bool:
    """Resolve a `use_triton` argument for the tensors' device."""
    if use_triton is None:
        return kernels_available(tensors[0].device)
    if use_triton and not kernels_available(tensors[0].device):
        raise RuntimeError(f"Triton kernels are not available on {tensors[0].device}")
    return use_triton
