"""Prometheus metrics of an engine-holding worker: a job's InferenceWorker actor or a serve replica.

Names follow the Prometheus conventions (base units, unit suffix last, `_total` on counters;
vLLM's metric set is the model): tokens/s is `rate(wavekv_worker_generated_tokens_total[1m])`,
the wave buffer's hit ratio is `wavekv_worker_wave_buffer_hit_ratio` (lifetime) or the rate of
hits over hits + misses, the bytes of missed clusters read from the store are
`wavekv_worker_store_fetched_bytes_total`. Each worker has its own registry, served over HTTP
(`serve_registry`) and labelled `worker=<id>`, so the series of several workers stay apart when
one endpoint merges them (the server's /metrics does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from inference_worker.engine.store_link import StoreLink
from inference_worker.settings import WorkerMetricsSettings

if TYPE_CHECKING:
    import torch

    from client import SequenceGeometry
    from inference_worker.engine.store_link import LinkCounters
    from inference_worker.retroinfer import FetchedBatch, IndexSegment
    from inference_worker.retroinfer.kernels.cluster_table import ClusterRows

T = TypeVar("T")

# Buckets in seconds: per-token times of a CPU run (~0.1 s) down to a GPU step (~5 ms).
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
PREFIX = "wavekv_worker_"
FINISH_REASONS = ("stop", "length", "abort")
STORE_CALLS = ("open", "upload", "flush", "fetch", "release")
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class WorkerMetrics:
    """The metric set of one worker, in its own registry."""

    def __init__(self, worker: str) -> None:
        disable_created_metrics()  # no `_created` series: they double the exposition
        self.worker = worker
        self.registry = CollectorRegistry()
        c, h, g = self._counter, self._histogram, self._gauge
        self.requests = c("requests", "Finished requests", "finish_reason")
        self.prompt_tokens = c("prompt_tokens", "Prompt tokens prefilled")
        self.generated_tokens = c("generated_tokens", "Tokens generated (rate = tokens/s)")
        self.unindexed = c(
            "unindexed_requests",
            "RetroInfer requests below the index threshold (run with full attention)",
        )
        self.time_to_first_token = h(
            "time_to_first_token_seconds", "Arrival to first generated token", REQUEST_BUCKETS
        )
        self.time_per_output_token = h(
            "time_per_output_token_seconds",
            "Time between consecutive generated tokens of a request",
            TOKEN_BUCKETS,
        )
        self.request_latency = h(
            "e2e_request_latency_seconds", "Arrival to last token", REQUEST_BUCKETS
        )
        self.hits = c(
            "wave_buffer_hits", "Retrieved clusters found in the wave buffer (GPU cluster cache)"
        )
        self.misses = c("wave_buffer_misses", "Retrieved clusters fetched from the store")
        self.hit_ratio = g(
            "wave_buffer_hit_ratio",
            "hits / (hits + misses) over the worker's lifetime (0 before any lookup)",
        )
        self.fetched_bytes = c("store_fetched_bytes", "Bytes of missed clusters read")
        self.uploaded_bytes = c("store_uploaded_bytes", "Bytes of index segments stored")
        self.store_call = h(
            "store_call_duration_seconds",
            "Duration of the engine's calls to its store link",
            STORE_BUCKETS,
            "call",
        )
        self.waiting = g("requests_waiting", "Requests queued, not started")
        self.running = g("requests_running", "Requests being decoded")
        self._lookups = [0, 0]  # hits, misses over the lifetime (for the ratio gauge)
        self._zeros()

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, doc, ["worker", *labels], registry=self.registry)

    def _gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(PREFIX + name, doc, ["worker"], registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(
            PREFIX + name, doc, ["worker", *labels], buckets=buckets, registry=self.registry
        )

    def _zeros(self) -> None:
        """Every series exists from the start (at 0), so dashboards and rates see no gaps."""
        w = self.worker
        for reason in FINISH_REASONS:
            self.requests.labels(w, reason)
        for call in STORE_CALLS:
            self.store_call.labels(w, call)
        for metric in (
            self.prompt_tokens, self.generated_tokens, self.unindexed, self.time_to_first_token,
            self.time_per_output_token, self.request_latency, self.hits, self.misses,
            self.fetched_bytes, self.uploaded_bytes, self.hit_ratio, self.waiting, self.running,
        ):  # fmt: skip
            metric.labels(w)

    def finished(
        self, stats: Mapping[str, Any], finish_reason: str, ttft_s: float, latency_s: float
    ) -> None:
        """Count one finished request from its engine stats (GenerationResult.stats)."""
        w = self.worker
        self.requests.labels(w, finish_reason).inc()
        self.prompt_tokens.labels(w).inc(int(stats.get("prompt_tokens", 0)))
        if stats.get("attention") == "retroinfer" and stats.get("indexed") is False:
            self.unindexed.labels(w).inc()
        hits, misses = int(stats.get("hits", 0)), int(stats.get("misses", 0))
        self.hits.labels(w).inc(hits)
        self.misses.labels(w).inc(misses)
        self._lookups[0] += hits
        self._lookups[1] += misses
        total = sum(self._lookups)
        self.hit_ratio.labels(w).set(self._lookups[0] / total if total else 0.0)
        self.fetched_bytes.labels(w).inc(int(stats.get("store_fetched_bytes", 0)))
        self.uploaded_bytes.labels(w).inc(int(stats.get("store_uploaded_bytes", 0)))
        self.time_to_first_token.labels(w).observe(ttft_s)
        self.request_latency.labels(w).observe(latency_s)

    def tokens(self, count: int) -> None:
        """`count` tokens were generated."""
        self.generated_tokens.labels(self.worker).inc(count)

    def token_gaps(self, seconds: float, count: int = 1) -> None:
        """`count` inter-token times of `seconds` each."""
        child = self.time_per_output_token.labels(self.worker)
        for _ in range(count):
            child.observe(seconds)

    def queue(self, waiting: int, running: int) -> None:
        self.waiting.labels(self.worker).set(waiting)
        self.running.labels(self.worker).set(running)

    def timed(self, call: str, fn: Callable[[], T]) -> T:
        """Run `fn` and record its duration as a store call named `call`."""
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.store_call.labels(self.worker, call).observe(time.perf_counter() - start)


class TimedStoreLink(StoreLink):
    """A StoreLink that records the duration of each call into WorkerMetrics. Declares the
    wrapped link's capabilities (its cluster rows, graph-safe fetches) and delegates other
    attributes to it, so the engine sees the same link."""

    def __init__(self, link: StoreLink, metrics: WorkerMetrics) -> None:
        self.link = link
        self.metrics = metrics
        self.counters: LinkCounters = link.counters  # the link's own (it updates them in place)

    def open(self, sequence_ids: Sequence[str], geometry: SequenceGeometry) -> None:
        self.metrics.timed("open", lambda: self.link.open(sequence_ids, geometry))

    def upload(self, sequence_ids: Sequence[str], segment: IndexSegment) -> None:
        self.metrics.timed("upload", lambda: self.link.upload(sequence_ids, segment))

    def flush(self) -> None:
        self.metrics.timed("flush", self.link.flush)

    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable],
        cluster_ids: torch.Tensor,  # [R, n] cluster ids per row
        max_tokens: int,
    ) -> FetchedBatch:
        return self.metrics.timed(
            "fetch", lambda: self.link.fetch(layer, sequence_ids, cluster_ids, max_tokens)
        )

    def release(self, sequence_ids: Sequence[str]) -> None:
        self.metrics.timed("release", lambda: self.link.release(sequence_ids))

    def close(self) -> None:
        self.link.close()

    def cluster_base(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.link.cluster_base()

    def cluster_rows(self, layer: int, sequence_id: Hashable) -> ClusterRows | None:
        return self.link.cluster_rows(layer, sequence_id)

    def graph_safe(self) -> bool:
        return self.link.graph_safe()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.link, name)


def serve_registry(metrics: WorkerMetrics, settings: WorkerMetricsSettings) -> str:
    """Serve `metrics` on http://HOST:PORT/metrics (PORT 0: a free port); returns the URL
    other processes reach it at."""
    server, _ = start_http_server(settings.port, addr=settings.host, registry=metrics.registry)
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        import ray

        host = ray.util.get_node_ip_address()
    return f"http://{host}:{server.server_port}/metrics"
