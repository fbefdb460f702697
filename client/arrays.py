"""Inputs checked and converted before any RPC; outputs as torch tensors or numpy arrays.

Every check raises client.errors.InvalidArgumentError naming the argument, its index and what
was wrong (e.g. `segments[0].keys dtype float64 ...`), so a bad call fails before it reaches
the store. torch is optional: without it inputs are numpy arrays and outputs numpy arrays.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from client.errors import invalid
from client.types import ClusterSegment, SequenceGeometry
from wavekv_proto.codec import KV_DTYPE_NAMES, numpy_to_torch, to_numpy


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_TORCH = _installed("torch")


def use_torch(output: str) -> bool:
    """Whether results are torch tensors ("auto": if torch is installed)."""
    if output == "torch" and not _TORCH:
        raise ImportError("output='torch' needs torch installed (pip install torch)")
    return output == "torch" or (output == "auto" and _TORCH)


def output(arr: np.ndarray, name: str, torch_out: bool) -> Any:
    """numpy array of dtype `name` (bf16 as uint16 bits) as the caller's output type."""
    return numpy_to_torch(arr, name) if torch_out else arr


def _plain(x: Any) -> Any:
    """torch tensor -> numpy (bf16 metadata as float32); anything else unchanged."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return x


def floats(where: str, x: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    """A float array (any float dtype, converted to float32) of `shape` (None = any size)."""
    arr = np.asarray(_plain(x))
    if arr.dtype.kind != "f":
        raise invalid(f"{where}.dtype={arr.dtype} is not a float type")
    _check_shape(where, arr, shape)
    return np.ascontiguousarray(arr, np.float32)


def ints(where: str, x: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    """An integer array (converted to int64) of `shape`."""
    arr = np.asarray(_plain(x))
    if arr.dtype.kind not in "iu" and arr.size:  # an empty list is float64 to numpy
        raise invalid(f"{where}.dtype={arr.dtype} is not an integer type")
    _check_shape(where, arr, shape)
    return np.ascontiguousarray(arr, np.int64)


def cluster_ids(where: str, x: Any) -> np.ndarray:  # [n] int64
    ids = ints(where, x, (None,))
    negative = np.flatnonzero(ids < 0)
    if negative.shape[0]:
        j = int(negative[0])
        raise invalid(f"{where}[{j}]={int(ids[j])} is negative")
    return ids


def request_ids(requests: list[Any]) -> list[np.ndarray]:
    """Each FetchRequest's cluster ids as int64 [n], checked with one pass over all of them
    (this runs per layer per decode step): int64 numpy arrays are taken as they are."""
    ids = [
        x
        if isinstance(x, np.ndarray) and x.dtype == np.int64 and x.ndim == 1
        else ints(f"requests[{i}].cluster_ids", x, (None,))
        for i, x in enumerate(r.cluster_ids for r in requests)
    ]
    flat = np.concatenate(ids) if ids else np.empty(0, np.int64)
    if flat.shape[0] and flat.min() < 0:
        i = next(i for i, a in enumerate(ids) if a.shape[0] and a.min() < 0)
        cluster_ids(f"requests[{i}].cluster_ids", ids[i])  # raises, naming the index
    return ids


def _check_shape(where: str, arr: np.ndarray, shape: tuple[int | None, ...]) -> None:
    ok = arr.ndim == len(shape) and all(
        w is None or w == s for s, w in zip(arr.shape, shape, strict=True)
    )
    if not ok:
        want = ", ".join("?" if w is None else str(w) for w in shape)
        raise invalid(f"{where} shape={list(arr.shape)}, want [{want}]")


@dataclass(slots=True)
class CheckedSegment:
    """A ClusterSegment checked and converted to what goes on the wire."""

    layer: int
    kv_head: int
    dtype: str  # K/V dtype name
    keys: np.ndarray  # [N, D] (bf16 as uint16 bits)
    values: np.ndarray  # [N, D]
    centroids: np.ndarray  # [C, D] float32
    sizes: np.ndarray  # [C] int64
    value_sums: np.ndarray  # [C, D] float32
    offsets: np.ndarray  # [C + 1] int64


def segment(where: str, seg: ClusterSegment, geometry: SequenceGeometry | None) -> CheckedSegment:
    """The segment checked against itself and, when this client knows it, the sequence's
    geometry."""
    for name in ("layer", "kv_head"):
        value = getattr(seg, name)
        if not isinstance(value, int | np.integer) or value < 0:
            raise invalid(f"{where}.{name}={value!r} must be an int >= 0")
    if geometry is not None:
        for name, bound in (("layer", geometry.num_layers), ("kv_head", geometry.num_kv_heads)):
            if getattr(seg, name) >= bound:
                raise invalid(f"{where}.{name}={getattr(seg, name)} out of range [0, {bound})")
    keys, kdt = _kv(f"{where}.keys", seg.keys)
    values, vdt = _kv(f"{where}.values", seg.values)
    want = geometry.dtype if geometry is not None else kdt
    for name, dt in (("keys", kdt), ("values", vdt)):
        if dt != want:
            raise invalid(f"{where}.{name}.dtype={dt} does not match the sequence's dtype={want}")
    d = geometry.head_dim if geometry is not None else None
    _check_shape(f"{where}.keys", keys, (None, d))
    if values.shape != keys.shape:
        raise invalid(f"{where}.values shape={list(values.shape)} != keys shape={list(keys.shape)}")
    n, d = keys.shape
    centroids = floats(f"{where}.centroids", seg.centroids, (None, d))
    c = centroids.shape[0]
    sizes = ints(f"{where}.sizes", seg.sizes, (c,))
    value_sums = floats(f"{where}.value_sums", seg.value_sums, (c, d))
    offsets = ints(f"{where}.offsets", seg.offsets, (c + 1,))
    if c == 0:
        raise invalid(f"{where}: centroids is empty (C=0)")
    if n == 0:
        raise invalid(f"{where}: keys is empty (N=0)")
    if offsets[0] != 0 or offsets[-1] != n:
        raise invalid(
            f"{where}: offsets must run from 0 to N={n}, got offsets[0]={int(offsets[0])} "
            f"offsets[-1]={int(offsets[-1])}"
        )
    bad = np.flatnonzero(np.diff(offsets) != sizes)
    if bad.shape[0]:
        i = int(bad[0])
        raise invalid(
            f"{where}: offsets do not add up: offsets[{i + 1}]-offsets[{i}]="
            f"{int(offsets[i + 1] - offsets[i])} but sizes[{i}]={int(sizes[i])}"
        )
    return CheckedSegment(
        int(seg.layer), int(seg.kv_head), kdt, keys, values, centroids, sizes, value_sums, offsets
    )


def _kv(where: str, x: Any) -> tuple[np.ndarray, str]:
    try:
        arr, name = to_numpy(x)
    except TypeError as exc:
        raise invalid(f"{where}: {exc}; K/V must be one of {KV_DTYPE_NAMES}") from None
    if name not in KV_DTYPE_NAMES:
        raise invalid(f"{where}.dtype={name} is not one of {KV_DTYPE_NAMES}")
    return arr, name
