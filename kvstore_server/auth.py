"""Bearer-token authentication as a grpc.aio server interceptor (health checks stay open)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

AUTH_HEADER = "authorization"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"auth_token_file={path!r} is empty")
    return token


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        got = metadata.get(AUTH_HEADER)
        if got is None:
            return _deny(handler, f"missing '{AUTH_HEADER}: Bearer <token>' metadata")
        got_bytes = got.encode() if isinstance(got, str) else got
        if not hmac.compare_digest(got_bytes, self._expected):
            return _deny(handler, f"wrong token in '{AUTH_HEADER}' metadata")
        return handler


def _deny(handler: grpc.RpcMethodHandler, detail: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        if handler.request_streaming:  # discard the stream first (see servicer.PutSegments)
            async for _ in request:
                pass
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
