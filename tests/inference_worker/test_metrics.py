"""Worker metrics: conventional names, values from the engine's stats, the store-call timing
wrapper against the plain link on random inputs, and the HTTP endpoint."""

from __future__ import annotations

import urllib.request

import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inference_worker.engine import InProcessStoreLink
from inference_worker.metrics import TimedStoreLink, WorkerMetrics, serve_registry
from inference_worker.retroinfer import RetroInferConfig, RetroInferLayer
from inference_worker.settings import WorkerMetricsSettings


def values(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = bytes(generate_latest(metrics.registry)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_names_follow_prometheus_conventions() -> None:
    names = {name for name, _ in values(WorkerMetrics("w"))}
    assert "wavekv_worker_generated_tokens_total" in names
    assert "wavekv_worker_wave_buffer_hit_ratio" in names
    for name in names:
        assert name.startswith("wavekv_worker_")
        assert not name.endswith("_created")
        assert "_seconds" not in name or name.split("_seconds")[1] in (
            "",
            "_bucket",
            "_count",
            "_sum",
        )


def test_finished_requests_feed_the_counters() -> None:
    metrics = WorkerMetrics("w")
    stats = {"attention": "retroinfer", "prompt_tokens": 1500, "hits": 30, "misses": 10,
             "store_fetched_bytes": 4096, "indexed": True}  # fmt: skip
    metrics.tokens(5)
    metrics.token_gaps(0.03, 4)
    metrics.finished(stats, "length", ttft_s=0.5, latency_s=0.62)
    metrics.finished({"attention": "retroinfer", "prompt_tokens": 7, "indexed": False,
                      "hits": 0, "misses": 10}, "stop", 0.1, 0.2)  # fmt: skip
    got = values(metrics)
    w = (("worker", "w"),)
    assert got[("wavekv_worker_generated_tokens_total", w)] == 5
    assert got[("wavekv_worker_prompt_tokens_total", w)] == 1507
    assert got[("wavekv_worker_wave_buffer_hits_total", w)] == 30
    assert got[("wavekv_worker_wave_buffer_hit_ratio", w)] == 30 / 50
    assert got[("wavekv_worker_store_fetched_bytes_total", w)] == 4096
    assert got[("wavekv_worker_unindexed_requests_total", w)] == 1
    assert got[("wavekv_worker_time_per_output_token_seconds_count", w)] == 4
    assert got[("wavekv_worker_requests_total", (("finish_reason", "length"), *w))] == 1
    assert got[("wavekv_worker_requests_total", (("finish_reason", "abort"), *w))] == 0


def decode_through(link: object, seed: int) -> list[torch.Tensor]:
    """Prefill + 3 decode steps of one RetroInfer layer whose misses come from `link`."""
    gen = torch.Generator().manual_seed(seed)
    config = RetroInferConfig(min_retrieval_clusters=0)
    ids = ["s0"]
    layer = RetroInferLayer(config, 0, 4, 2, 32, link, ids)  # type: ignore[arg-type]
    keys = torch.randn(1, 2, 1300, 32, generator=gen)  # [B, Hkv, L, D]
    values_ = torch.randn(1, 2, 1300, 32, generator=gen)
    for segment in layer.prefill(keys, values_):
        link.upload(ids, segment)  # type: ignore[attr-defined]
    outs = []
    for _ in range(3):
        q = torch.randn(1, 4, 32, generator=gen)
        k, v = torch.randn(1, 2, 32, generator=gen), torch.randn(1, 2, 32, generator=gen)
        outs.append(layer.decode(q, k, v)[0])
    return outs


def test_timed_link_is_the_plain_link_plus_timings() -> None:
    for seed in (1, 2):
        plain, inner, metrics = InProcessStoreLink(), InProcessStoreLink(), WorkerMetrics("w")
        timed = TimedStoreLink(inner, metrics)
        expected, got = decode_through(plain, seed), decode_through(timed, seed)
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
        assert timed.counters is inner.counters
        fetches = values(metrics)[("wavekv_worker_store_call_duration_seconds_count",
                                   (("call", "fetch"), ("worker", "w")))]  # fmt: skip
        assert fetches == inner.counters.fetch_rpcs == plain.counters.fetch_rpcs > 0
        uploads = values(metrics)[("wavekv_worker_store_call_duration_seconds_count",
                                   (("call", "upload"), ("worker", "w")))]  # fmt: skip
        assert uploads == inner.counters.put_rpcs > 0


def test_endpoint_serves_the_registry_on_loopback() -> None:
    metrics = WorkerMetrics("w")
    metrics.tokens(3)
    url = serve_registry(metrics, WorkerMetricsSettings(port=0))
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    assert 'wavekv_worker_generated_tokens_total{worker="w"} 3.0' in text
