"""The servicer's edge: request decoding that cannot fail inside gRPC, protobuf field decoding,
and the registration of every KVStore method.

grpc.aio turns an exception in a request deserializer into UNKNOWN ("Unexpected DecodeError").
Here a message that does not parse becomes an `Undecodable` value instead, which the servicer
answers with INVALID_ARGUMENT like any other bad request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from kvstore_server.errors import InvalidArgument
from kvstore_server.sequence import Geometry
from wavekv_proto.codec import decode_numpy, dtype_name
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb


@dataclass(slots=True, frozen=True)
class Undecodable:
    """A request message that did not parse."""

    type_name: str
    reason: str

    def error(self, what: str = "request") -> InvalidArgument:
        return InvalidArgument(f"{what}: not a valid {self.type_name} message ({self.reason})")


def _parser(cls: Any) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name

    def parse(raw: bytes) -> Any:
        try:
            return cls.FromString(raw)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Undecodable(name, str(exc)[:200] or type(exc).__name__)

    return parse


def check_decoded(request: Any, what: str = "request") -> None:
    if isinstance(request, Undecodable):
        raise request.error(what)


def serialize(msg: Any) -> bytes:
    """FetchClusters chunks arrive pre-serialized (wavekv_proto.framing); headers are messages."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def add_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """Register every KVStore method (as the generated helper does) with requests decoded by
    `_parser` and a pass-through serializer for FetchClusters so chunks skip protobuf."""
    service = pb.DESCRIPTOR.services_by_name["KVStore"]
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
    }
    handlers = {}
    for method in service.methods:
        response_cls = getattr(pb, method.output_type.name)
        make = kinds[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_parser(getattr(pb, method.input_type.name)),
            response_serializer=serialize
            if method.name == "FetchClusters"
            else response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    register = getattr(server, "add_registered_method_handlers", None)  # grpcio >= 1.62
    if register is not None:
        register(service.full_name, handlers)


def geometry(msg: pb.Geometry) -> Geometry:
    name = dtype_name(msg.dtype)
    if name is None:
        raise InvalidArgument(f"geometry.dtype={msg.dtype} is unset or unknown")
    return Geometry(msg.num_layers, msg.num_kv_heads, msg.head_dim, name)


def array(field: str, msg: pb.Tensor, dtype: str) -> np.ndarray:
    """A Tensor field as a numpy array of `dtype` (InvalidArgument naming the field)."""
    try:
        arr, name = decode_numpy(msg)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {exc}") from None
    if name != dtype:
        raise InvalidArgument(f"{field}.dtype={name}, want {dtype}")
    return arr
