"""One store target: the asyncio channel and stub the SDK uses, plus a lazily opened blocking
channel for the blocking SDK's hot call (FetchDescriptors)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb
from wavekv_proto.wavekv.v1 import kvstore_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 << 20
# Reconnect quickly after the store restarts (gRPC's default backoff starts at 1 s and grows to
# 120 s, so a call could wait minutes for a store that is long back).
RECONNECT_BACKOFF_MS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class Shard:
    """One store target: channel, stub, call metadata."""

    def __init__(
        self,
        target: str,
        token: str | None,
        root_cert: bytes | None,
        tls: bool,
        server_name: str | None,
    ) -> None:
        self.target = target
        self._sync_stub: pb_grpc.KVStoreStub | None = None
        self._sync_channel: grpc.Channel | None = None
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *RECONNECT_BACKOFF_MS,
        ]
        if tls:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            creds = grpc.ssl_channel_credentials(root_certificates=root_cert)
            self.channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            creds = None
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self._sync_args = (creds, options)
        self.stub = pb_grpc.KVStoreStub(self.channel)
        # FetchClusters with raw responses: client.wire.FetchAssembler parses chunks in place
        self.fetch_raw = self.channel.unary_stream(
            "/wavekv.v1.KVStore/FetchClusters",
            request_serializer=pb.FetchClustersRequest.SerializeToString,
            response_deserializer=None,
        )
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def wait_ready(self) -> None:
        """Until the channel is connected (gRPC reconnects on its own)."""
        await self.channel.channel_ready()

    def state(self) -> str:
        return self.channel.get_state(try_to_connect=False).name

    def sync_channel(self) -> grpc.Channel:
        self.sync_stub()
        assert self._sync_channel is not None
        return self._sync_channel

    def sync_stub(self) -> pb_grpc.KVStoreStub:
        """A blocking stub on a second channel to the same target (same credentials): the
        blocking SDK's per-layer FetchDescriptors call skips the event-loop thread hop."""
        if self._sync_stub is None:
            creds, options = self._sync_args
            channel = (
                grpc.secure_channel(self.target, creds, options=options)
                if creds is not None
                else grpc.insecure_channel(self.target, options=options)
            )
            self._sync_channel = channel
            self._sync_stub = pb_grpc.KVStoreStub(channel)
        return self._sync_stub

    def subscribe_sync(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Connectivity changes of the blocking channel (grpc calls back on its own thread)."""
        self.sync_stub()
        assert self._sync_channel is not None
        self._sync_channel.subscribe(callback, try_to_connect=False)

    def unsubscribe_sync(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        if self._sync_channel is not None:
            self._sync_channel.unsubscribe(callback)

    def close_sync(self) -> None:
        if self._sync_channel is not None:
            self._sync_channel.close()
            self._sync_channel = self._sync_stub = None


def load_cert(cert: bytes | str | Path | None) -> bytes | None:
    if cert is None or isinstance(cert, bytes):
        return cert
    return Path(cert).read_bytes()
