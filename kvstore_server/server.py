"""Build, run and stop the grpc.aio store server (health, reflection, auth, TLS, metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore_server.arena import make_arena
from kvstore_server.auth import TokenAuthInterceptor, read_token
from kvstore_server.servicer import KVStoreServicer, add_to_server
from kvstore_server.settings import ServerSettings
from kvstore_server.stats import PrometheusExporter, RpcStats
from kvstore_server.store import Store
from wavekv_proto.wavekv.v1 import kvstore_pb2

log = logging.getLogger("kvstore_server")
SERVICE_NAME = kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"].full_name


class StoreServer:
    """One store process: `await start()` binds and serves; `await stop()` drains and exits."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        arena = make_arena(
            settings.shared_memory,
            settings.shm_dir,
            settings.shm_slab_bytes,
            settings.max_lease_ttl_s,
        )
        self.store = Store(settings.capacity_bytes, arena)
        self.metrics: PrometheusExporter | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]

    async def start(self) -> int:
        s = self.settings
        if s.metrics_port is not None:
            self.metrics = PrometheusExporter(self.store, s.metrics_port, s.host)
        servicer = KVStoreServicer(self.store, RpcStats(self.metrics), s.fetch_chunk_bytes)
        interceptors = (
            [TokenAuthInterceptor(read_token(s.auth_token_file))] if s.auth_token_file else []
        )
        options = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        add_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        address = f"{s.host}:{s.port}"
        self.port = (
            server.add_secure_port(address, _tls(s))
            if s.tls_cert
            else server.add_insecure_port(address)
        )
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.ready_file:
            self._write_ready(Path(s.ready_file))
        log.info(
            "serving",
            extra={
                "host": s.host,
                "port": self.port,
                "tls": bool(s.tls_cert),
                "auth": bool(s.auth_token_file),
                "capacity_bytes": s.capacity_bytes,
                "metrics_port": self.metrics.port if self.metrics else None,
                "incarnation_id": self.store.incarnation_id,
            },
        )
        return self.port

    def _write_ready(self, path: Path) -> None:
        doc = {
            "host": self.settings.host,
            "port": self.port,
            "pid": os.getpid(),
            "incarnation_id": self.store.incarnation_id,
            "metrics_port": self.metrics.port if self.metrics else None,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    async def stop(self, grace_s: float | None = None) -> None:
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self._server.stop(grace)
        self._server = None
        self.store.arena.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped", extra={"port": self.port})

    async def serve_until_signal(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down", extra={"grace_s": self.settings.shutdown_grace_s})
        await self.stop()


def _tls(s: ServerSettings) -> grpc.ServerCredentials:
    assert s.tls_cert is not None and s.tls_key is not None
    return grpc.ssl_server_credentials(
        [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())]
    )
