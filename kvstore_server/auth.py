"""Bearer-token authentication (an interceptor) and per-token namespaces (checked per request).

Token file (`--auth-token-file`), one token per line, `#` starts a comment:

    s3cret-a  tenant-a tenant-a-eval   # this token may name these namespaces only
    s3cret-b  tenant-b
    admin-tok *                         # any namespace
    legacy-token                        # a line with only a token: any namespace

The interceptor refuses calls without a known token (UNAUTHENTICATED; health checks stay open);
the servicer refuses a namespace the call's token may not name (PERMISSION_DENIED).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from kvstore_server.errors import PermissionDenied
from kvstore_server.names import check_name, echo

AUTH_HEADER = "authorization"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ANY = "*"


class TokenTable:
    """token -> namespaces it may name (ANY = all)."""

    def __init__(self, grants: dict[str, frozenset[str]]) -> None:
        if not grants:
            raise ValueError("the token file has no tokens")
        self._grants = {f"Bearer {t}".encode(): ns for t, ns in grants.items()}

    @classmethod
    def parse(cls, text: str, source: str = "token file") -> TokenTable:
        grants: dict[str, frozenset[str]] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            token, names = words[0], words[1:] or [ANY]
            for name in names:
                if name != ANY:
                    try:
                        check_name("namespace", name)
                    except Exception as exc:
                        raise ValueError(f"{source} line {lineno}: {exc}") from None
            if token in grants:
                raise ValueError(f"{source} line {lineno}: the token is listed twice")
            grants[token] = frozenset(names)
        return cls(grants)

    @classmethod
    def read(cls, path: str) -> TokenTable:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            return cls.parse(text, f"auth_token_file={path!r}")
        except ValueError as exc:
            raise ValueError(f"auth_token_file={path!r}: {exc}") from None

    def grants(self, header: bytes) -> frozenset[str] | None:
        """Namespaces of the token in an `authorization` header value (None: unknown token)."""
        found = None
        for expected, names in self._grants.items():  # compare all: no early exit on a match
            if hmac.compare_digest(header, expected):
                found = names
        return found

    def authorize(self, metadata: Sequence[tuple[str, Any]] | None, namespace: str) -> None:
        """PermissionDenied unless the call's token may name `namespace`."""
        header = dict(metadata or ()).get(AUTH_HEADER, b"")
        names = self.grants(header.encode() if isinstance(header, str) else header)
        if names is None or (ANY not in names and namespace not in names):
            raise PermissionDenied(f"this token may not use namespace={echo(namespace)}")


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, table: TokenTable) -> None:
        self._table = table

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
        if self._table.grants(got_bytes) is None:
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
