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


def patch_interpreter_index() -> None:
    """triton 3.6's interpreter turns a loaded scalar into a range bound with `int(data)`, which
    rejects its 1-element arrays (the copy kernel's `range(0, n, BLOCK)`); take element 0.
    Call before running kernels under TRITON_INTERPRET=1."""
    from triton.runtime import interpreter

    orig = interpreter._patch_lang_tensor

    def patched(tensor, scope):  # type: ignore[no-untyped-def]
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
