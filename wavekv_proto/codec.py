"""Tensor <-> wire bytes codec shared by the store and the SDK.

Tensors travel as raw little-endian bytes plus a dtype and a shape (`wavekv.v1.Tensor`).
numpy has no bfloat16, so on the numpy side bf16 data is carried as its raw uint16 bit
pattern; on the torch side it is a real `torch.bfloat16` tensor. Decoding is zero-copy where
the bytes object allows it (numpy views the protobuf bytes; torch views them read-only after
one copy into a writable buffer).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

if TYPE_CHECKING:
    import torch

assert sys.byteorder == "little", "the wire format is little-endian; big-endian hosts unsupported"

DTYPE_NAMES = ("float16", "bfloat16", "float32", "int32", "int64")
KV_DTYPE_NAMES = ("float16", "bfloat16", "float32")
_WIRE = {
    "float16": pb.DTYPE_FLOAT16,
    "bfloat16": pb.DTYPE_BFLOAT16,
    "float32": pb.DTYPE_FLOAT32,
    "int32": pb.DTYPE_INT32,
    "int64": pb.DTYPE_INT64,
}
_NAME: dict[int, str] = {v: k for k, v in _WIRE.items()}
# numpy storage dtype per name (bf16 carried as its uint16 bit pattern)
_NUMPY: dict[str, np.dtype] = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
    "float32": np.dtype(np.float32),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
}
_FROM_NUMPY: dict[np.dtype, str] = {v: k for k, v in _NUMPY.items() if k != "bfloat16"}
_FROM_NUMPY[np.dtype(np.uint16)] = "bfloat16"


def itemsize(name: str) -> int:
    return _NUMPY[name].itemsize


def wire_dtype(name: str) -> pb.DType:
    """dtype name -> wavekv.v1.DType value; ValueError on unknown names."""
    if name not in _WIRE:
        raise ValueError(f"dtype={name!r} is not one of {DTYPE_NAMES}")
    return _WIRE[name]


def dtype_name(wire: int) -> str | None:
    """wavekv.v1.DType value -> dtype name; None for DTYPE_UNSPECIFIED or unknown values."""
    return _NAME.get(wire)


def numpy_dtype(name: str) -> np.dtype:
    return _NUMPY[name]


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float32": torch.float32,
        "int32": torch.int32,
        "int64": torch.int64,
    }[name]


def to_numpy(x: Any) -> tuple[np.ndarray, str]:
    """numpy array or torch tensor -> (C-contiguous numpy array on host, dtype name).

    torch tensors are viewed, not copied, when already contiguous on the CPU; bf16 becomes its
    uint16 bit pattern. Raises TypeError for unsupported types and dtypes.
    """
    if isinstance(x, np.ndarray):
        arr = np.ascontiguousarray(x)
        name = _FROM_NUMPY.get(arr.dtype.newbyteorder("=")) if arr.dtype.isnative else None
        if name is None:
            raise TypeError(f"numpy dtype {x.dtype} is not one of {sorted(map(str, _FROM_NUMPY))}")
        return arr, name
    if _is_torch(x):
        return _torch_to_numpy(x)
    raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")


def _is_torch(x: Any) -> bool:
    mod = sys.modules.get("torch")
    return mod is not None and isinstance(x, mod.Tensor)


def _torch_to_numpy(x: torch.Tensor) -> tuple[np.ndarray, str]:
    import torch

    names = {v: k for k, v in zip(DTYPE_NAMES, map(torch_dtype, DTYPE_NAMES), strict=True)}
    name = names.get(x.dtype)
    if name is None:
        raise TypeError(f"torch dtype {x.dtype} is not one of {list(names)}")
    t = x.detach().to("cpu").contiguous()
    if name == "bfloat16":
        t = t.view(torch.int16)
    return t.numpy().view(_NUMPY[name]), name


def encode(x: Any, *, with_data: bool = True) -> pb.Tensor:
    """numpy array / torch tensor -> wavekv.v1.Tensor (data omitted when with_data=False)."""
    arr, name = to_numpy(x)
    msg = pb.Tensor(dtype=_WIRE[name], shape=arr.shape)
    if with_data:
        msg.data = arr.tobytes()
    return msg


def encode_numpy(arr: np.ndarray, name: str) -> pb.Tensor:
    """Encode a numpy array whose storage dtype matches `name` (fast path, no dtype lookup)."""
    return pb.Tensor(dtype=_WIRE[name], shape=arr.shape, data=arr.tobytes())


def decode_numpy(msg: pb.Tensor) -> tuple[np.ndarray, str]:
    """wavekv.v1.Tensor -> (read-only numpy view of its bytes, dtype name).

    Raises ValueError when dtype, shape and byte length disagree.
    """
    name = _NAME.get(msg.dtype)
    if name is None:
        raise ValueError(f"dtype={msg.dtype} is not a known wavekv.v1.DType")
    shape = tuple(msg.shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape={list(shape)} has a negative dimension")
    count = math.prod(shape)
    expected = count * _NUMPY[name].itemsize
    if len(msg.data) != expected:
        raise ValueError(
            f"shape={list(shape)} dtype={name} needs {expected} bytes, got {len(msg.data)}"
        )
    return np.frombuffer(msg.data, dtype=_NUMPY[name], count=count).reshape(shape), name


def decode_torch(msg: pb.Tensor) -> torch.Tensor:
    """wavekv.v1.Tensor -> torch tensor (bf16 restored from its bit pattern)."""
    arr, name = decode_numpy(msg)
    return numpy_to_torch(arr, name)


def numpy_to_torch(arr: np.ndarray, name: str) -> torch.Tensor:
    """View a numpy array (bf16 as uint16 bits) as a torch tensor of dtype `name`; no copy
    when the array is writable."""
    import torch

    if not arr.flags.writeable:
        arr = arr.copy()
    if name == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)
