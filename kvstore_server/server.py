"""Build, run and stop the grpc.aio store server (health, reflection, auth, TLS, metrics,
the TTL sweeper and, with --data-dir, the journal's fsync timer)."""

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

from kvstore_server.arena import ArenaConfig
from kvstore_server.arenas import Arenas
from kvstore_server.auth import TokenAuthInterceptor, TokenTable
from kvstore_server.edge import add_to_server
from kvstore_server.memory import return_freed_memory, trim
from kvstore_server.recovery import PersistOptions, open_persistent_store
from kvstore_server.servicer import KVStoreServicer, ServicerConfig
from kvstore_server.settings import ServerSettings
from kvstore_server.stats import PrometheusExporter, RpcStats
from kvstore_server.store import Store, StoreConfig
from wavekv_proto.wavekv.v1 import kvstore_pb2

log = logging.getLogger("kvstore_server")
SERVICE_NAME = kvstore_pb2.DESCRIPTOR.services_by_name["KVStore"].full_name
SWEEP_EVERY_S = 5.0  # TTL sweeps and lease expiry, at most this far apart
FSYNC_EVERY_S = 1.0


def build_store(s: ServerSettings) -> Store:
    """The store these settings describe (recovered from --data-dir when given)."""
    config = StoreConfig(s.capacity_bytes, s.sequence_ttl_s, s.max_namespaces)
    if s.data_dir is not None:
        options = PersistOptions(
            Path(s.data_dir),
            Path(s.slab_dir),
            s.fsync,
            s.shm_slab_bytes,
            s.max_lease_ttl_s,
            s.max_namespaces,
        )
        return open_persistent_store(options, config)
    arena_config = ArenaConfig(
        Path(s.slab_dir), s.shm_slab_bytes, s.max_lease_ttl_s, str(os.getpid())
    )
    return Store(config, Arenas(s.shared_memory, arena_config, s.max_namespaces))


class StoreServer:
    """One store process: `await start()` binds and serves; `await stop()` drains and exits."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        return_freed_memory()
        self.store = build_store(settings)
        self.tokens = (
            TokenTable.read(settings.auth_token_file) if settings.auth_token_file else None
        )
        self.metrics: PrometheusExporter | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        s = self.settings
        if s.metrics_port is not None:
            self.metrics = PrometheusExporter(self.store, s.metrics_port, s.metrics_host)
        config = ServicerConfig(
            chunk_bytes=s.fetch_chunk_bytes,
            max_fetch_bytes=s.max_fetch_bytes,
            max_descriptor_reply_bytes=s.max_message_bytes // 2,
            max_put_streams=s.max_put_streams,
            stream_idle_s=s.stream_idle_s,
            advertise_arena=s.shared_memory != "off",
        )
        stats = RpcStats(self.metrics, s.max_namespaces)
        servicer = KVStoreServicer(self.store, stats, config, self.tokens)
        interceptors = [TokenAuthInterceptor(self.tokens)] if self.tokens else []
        options = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
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
        self._tasks = [asyncio.create_task(self._sweep())]
        if self.store.persistence is not None and s.fsync == "everysec":
            self._tasks.append(asyncio.create_task(self._fsync()))
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
                "shared_memory": self.store.arenas.shared,
                "data_dir": s.data_dir,
                "metrics_port": self.metrics.port if self.metrics else None,
                "incarnation_id": self.store.incarnation_id,
            },
        )
        return self.port

    async def _sweep(self) -> None:
        """Drop sequences past their TTL and expire readers' leases, periodically."""
        ttl = self.settings.sequence_ttl_s
        every = min(SWEEP_EVERY_S, ttl / 4) if ttl else SWEEP_EVERY_S
        trimmed_at = self.store.dropped
        while True:
            await asyncio.sleep(every)
            try:
                dropped = self.store.expire_idle()
                for _, arena in self.store.arenas.items():
                    arena.expire()
                self.store.arenas.close_idle_identities(min_age_s=every)
                if self.store.dropped != trimmed_at:  # sequences went: give their memory back
                    trimmed_at = self.store.dropped
                    trim()
            except Exception:
                log.exception("sweep failed")
                continue
            if dropped:
                log.info("sequences expired", extra={"count": dropped})

    async def _fsync(self) -> None:
        """The everysec policy: flush slabs, checkpoint and fsync the journal once a second."""
        persistence = self.store.persistence
        assert persistence is not None
        while True:
            await asyncio.sleep(FSYNC_EVERY_S)
            try:
                await asyncio.to_thread(persistence.flush_slabs_and_checkpoint)
            except Exception:
                log.exception("journal fsync failed")

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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        persistent = self.store.persistence is not None
        if persistent:
            self.store.persistence.compact()  # type: ignore[union-attr]
            self.store.persistence.close()  # type: ignore[union-attr]
        self.store.arenas.close(unlink=not persistent)
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
