"""Per-RPC counters and latencies (for GetStats) with an optional Prometheus exporter."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kvstore_server.store import Store

RECENT = 2048  # latencies kept per method for percentiles


@dataclass(slots=True)
class MethodStats:
    count: int = 0
    errors: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def summary(self) -> dict[str, Any]:
        lat = np.fromiter(self.recent, np.float64) * 1e3 if self.recent else np.zeros(1)
        return {
            "count": self.count,
            "errors": self.errors,
            "mean_ms": self.total_s * 1e3 / max(self.count, 1),
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": self.max_s * 1e3,
        }


class RpcStats:
    def __init__(self, prometheus: PrometheusExporter | None = None) -> None:
        self.methods: dict[str, MethodStats] = {}
        self._prometheus = prometheus

    def record(self, method: str, seconds: float, code: str) -> None:
        m = self.methods.setdefault(method, MethodStats())
        m.count += 1
        m.errors += code != "OK"
        m.total_s += seconds
        m.max_s = max(m.max_s, seconds)
        m.recent.append(seconds)
        if self._prometheus is not None:
            self._prometheus.record(method, seconds, code)


class PrometheusExporter:
    """Serves wavekv_* metrics on its own port from a private registry."""

    def __init__(self, store: Store, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            start_http_server,
        )

        self.registry = CollectorRegistry()
        self._calls = Counter(
            "wavekv_rpc", "RPCs handled", ["method", "code"], registry=self.registry
        )
        self._latency = Histogram(
            "wavekv_rpc_latency_seconds",
            "RPC latency",
            ["method"],
            registry=self.registry,
            buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0),
        )
        gauges = {
            "wavekv_bytes_used": ("bytes of K/V and metadata held", lambda: store.bytes_used),
            "wavekv_capacity_bytes": ("byte budget (0 = unlimited)", lambda: store.capacity_bytes),
            "wavekv_sequences": ("sequences held", lambda: store.num_sequences),
        }
        for name, (doc, fn) in gauges.items():
            Gauge(name, doc, registry=self.registry).set_function(fn)
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self.server.server_port

    def record(self, method: str, seconds: float, code: str) -> None:
        self._calls.labels(method, code).inc()
        self._latency.labels(method).observe(seconds)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
