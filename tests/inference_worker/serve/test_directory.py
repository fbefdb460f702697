"""Merging the expositions of several replicas into one /metrics."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inference_worker.metrics import WorkerMetrics
from inference_worker.serve.directory import MergedCollector


def exposition(worker: str, tokens: int, hits: int, misses: int) -> str:
    metrics = WorkerMetrics(worker)
    metrics.tokens(tokens)
    stats = {"attention": "retroinfer", "hits": hits, "misses": misses, "prompt_tokens": 7}
    metrics.finished(stats, "length", ttft_s=0.2, latency_s=1.0)
    return bytes(generate_latest(metrics.registry)).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_merged_exposition_holds_every_replica_once() -> None:
    a, b = exposition("a", 5, 3, 1), exposition("b", 7, 0, 4)
    merged = bytes(generate_latest(MergedCollector([a, b]))).decode()  # type: ignore[arg-type]
    got = samples(merged)
    assert got == samples(a) | samples(b)
    assert merged.count("# TYPE wavekv_worker_generated_tokens_total counter") == 1
    assert got[("wavekv_worker_generated_tokens_total", (("worker", "b"),))] == 7
    assert got[("wavekv_worker_wave_buffer_hit_ratio", (("worker", "a"),))] == 0.75
    assert got[("wavekv_worker_wave_buffer_hit_ratio", (("worker", "b"),))] == 0.0
