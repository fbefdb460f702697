"""Raw grpc.aio bytes server: the baseline for the store benchmark (no protobuf, no store work).

`python -m benchmarks.raw_server` serves on 127.0.0.1:0 and prints {"port": N}:
  /raw.Raw/Echo    unary: request = 16-byte header (response_bytes, unused) + padding; replies
                   response_bytes bytes
  /raw.Raw/Stream  unary -> stream: header (total_bytes, chunk_bytes) + padding; streams
                   total_bytes in chunk_bytes pieces sliced from a preallocated buffer
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import AsyncIterator

import grpc

from kvstore_server.embedded import new_event_loop

HEADER = struct.Struct("<QQ")
MAX_MESSAGE_BYTES = 64 << 20


class RawService:
    def __init__(self) -> None:
        self._buffer = bytearray(0)

    def _payload(self, n: int) -> memoryview:
        if len(self._buffer) < n:
            self._buffer = bytearray(n)
        return memoryview(self._buffer)

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        response_bytes, _ = HEADER.unpack_from(request)
        return self._payload(response_bytes)[:response_bytes].tobytes()

    async def stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        total, chunk = HEADER.unpack_from(request)
        view = self._payload(total)
        for off in range(0, total, chunk):
            yield view[off : off + chunk].tobytes()


async def serve() -> None:
    service = RawService()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(service.echo),
        "Stream": grpc.unary_stream_rpc_method_handler(service.stream),
    }
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("raw.Raw", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()
    await server.wait_for_termination()


def main() -> None:
    argparse.ArgumentParser(description="raw grpc.aio bytes baseline server").parse_args()
    new_event_loop().run_until_complete(serve())


if __name__ == "__main__":
    main()
