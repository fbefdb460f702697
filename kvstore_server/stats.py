"""Per-namespace RPC counters and latencies (GetStats) and the Prometheus exporter (/metrics).

Metric names follow Prometheus conventions (unit suffix last, counters end in `_total`), every
series carries the namespace: a tenant's totals are never mixed with another's, and GetStats
answers only the caller's namespace. The endpoint binds loopback unless --metrics-host says
otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kvstore_server.store import Store

RECENT = 1024  # latencies kept per (namespace, method) for percentiles
OTHER = "(other)"  # bucket for namespaces past the tracked limit (or invalid names)


@dataclass(slots=True)
class MethodStats:
    count: int = 0
    errors: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    recent: np.ndarray = field(default_factory=lambda: np.zeros(RECENT, np.float32))  # seconds

    def add(self, seconds: float, ok: bool) -> None:
        self.recent[self.count % RECENT] = seconds
        self.count += 1
        self.errors += not ok
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def summary(self) -> dict[str, Any]:
        lat = (
            self.recent[: min(self.count, RECENT)] * 1e3 if self.count else np.zeros(1, np.float32)
        )
        return {
            "count": self.count,
            "errors": self.errors,
            "mean_ms": self.total_s * 1e3 / max(self.count, 1),
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": self.max_s * 1e3,
        }


class RpcStats:
    """namespace -> method -> MethodStats, for at most `max_namespaces` namespaces (the rest
    are counted under OTHER, so clients cannot grow this without bound)."""

    def __init__(self, prometheus: PrometheusExporter | None = None, max_namespaces: int = 4096):
        self.namespaces: dict[str, dict[str, MethodStats]] = {}
        self.max_namespaces = max_namespaces
        self._prometheus = prometheus

    def label(self, namespace: str) -> str:
        """The namespace as a stats key ("" and unknown-past-the-limit become OTHER)."""
        if namespace in self.namespaces:
            return namespace
        return namespace if namespace and len(self.namespaces) < self.max_namespaces else OTHER

    def record(self, namespace: str, method: str, seconds: float, code: str) -> None:
        ns = self.label(namespace)
        m = self.namespaces.setdefault(ns, {}).get(method)
        if m is None:
            m = self.namespaces[ns][method] = MethodStats()
        m.add(seconds, code == "OK")
        if self._prometheus is not None:
            self._prometheus.record(ns, method, seconds, code)

    def methods(self, namespace: str) -> dict[str, MethodStats]:
        return self.namespaces.get(namespace, {})


class PrometheusExporter:
    """Serves wavekv_store_* metrics on its own port from a private registry."""

    def __init__(self, store: Store, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

        self.registry = CollectorRegistry()
        self._calls = Counter(
            "wavekv_store_rpcs",
            "RPCs answered, by namespace, method and status code",
            ["namespace", "method", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "wavekv_store_rpc_duration_seconds",
            "RPC latency",
            ["namespace", "method"],
            registry=self.registry,
            buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0),
        )
        self.registry.register(_StoreCollector(store))
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self.server.server_port

    def record(self, namespace: str, method: str, seconds: float, code: str) -> None:
        self._calls.labels(namespace, method, code).inc()
        self._latency.labels(namespace, method).observe(seconds)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _StoreCollector:
    """Gauges read from the store at scrape time (the scrape thread only reads numbers)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.store
        yield GaugeMetricFamily(
            "wavekv_store_capacity_bytes",
            "byte budget of the store (0 = unlimited)",
            s.capacity_bytes,
        )
        yield GaugeMetricFamily(
            "wavekv_store_free_bytes",
            "capacity not used or reserved (0 when unlimited)",
            s.bytes_free,
        )
        per_ns = {
            "used": GaugeMetricFamily(
                "wavekv_store_used_bytes", "K/V and metadata bytes held", labels=["namespace"]
            ),
            "reserved": GaugeMetricFamily(
                "wavekv_store_reserved_bytes",
                "capacity held by puts still arriving",
                labels=["namespace"],
            ),
            "allocated": GaugeMetricFamily(
                "wavekv_store_arena_allocated_bytes",
                "shared-memory bytes allocated (growth slack and headers included)",
                labels=["namespace"],
            ),
            "sequences": GaugeMetricFamily(
                "wavekv_store_sequences", "sequences held", labels=["namespace"]
            ),
        }
        expired = CounterMetricFamily(
            "wavekv_store_expired_sequences",
            "sequences dropped after their TTL",
            labels=["namespace"],
        )
        for ns in s.namespaces():
            u = s.usage(ns)
            per_ns["used"].add_metric([ns], u.bytes_used)
            per_ns["reserved"].add_metric([ns], u.reserved_bytes)
            per_ns["allocated"].add_metric([ns], s.arenas.allocated_bytes(ns))
            per_ns["sequences"].add_metric([ns], u.sequences)
        for ns, count in list(s.expired.items()):
            expired.add_metric([ns], count)
        yield from per_ns.values()
        yield expired
