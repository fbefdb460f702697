"""The InferenceWorker body (in-process, the real default model): one engine batch per call,
a refused request fails alone, and its /metrics shows tokens and the hit ratio."""

from __future__ import annotations

import urllib.request

import pytest

from inference_worker.actor import InferenceWorkerImpl, WorkerOptions

pytestmark = pytest.mark.slow  # the real default model


@pytest.fixture(scope="module")
def worker() -> InferenceWorkerImpl:
    return InferenceWorkerImpl(WorkerOptions())


RUN = {"attention": "retroinfer", "max_new_tokens": 4, "retro": {}}


def test_batch_with_a_refused_request(worker: InferenceWorkerImpl) -> None:
    records = [
        {"id": "a", "prompt": "The capital of France is"},
        {"id": "long", "prompt": [1] * 9000},  # beyond the model's 8K context
        {"id": "b", "prompt": "The capital of Spain is"},
        {"id": "bad", "prompt": "x", "colour": "red"},
    ]
    out = worker.generate(records, RUN)
    assert [o["id"] for o in out] == ["a", "long", "b", "bad"]
    assert "exceed the context" in out[1]["error"] and "unknown fields" in out[3]["error"]
    assert len(out[0]["token_ids"]) == 4 and len(out[2]["token_ids"]) == 4
    assert out[0]["stats"]["indexed"] is False and out[0]["stats"]["not_indexed_reason"]


def test_metrics_endpoint_shows_tokens_and_hit_ratio(worker: InferenceWorkerImpl) -> None:
    prompt = "The quick brown fox jumps over the lazy dog near the river bank. " * 110
    (result,) = worker.generate([{"id": "long", "prompt": prompt}], RUN)
    assert result["stats"]["indexed"] is True
    with urllib.request.urlopen(worker.describe()["metrics_url"], timeout=10) as response:
        text = response.read().decode()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith("wavekv_")}  # fmt: skip
    w = f'{{worker="{worker.metrics.worker}"}}'
    assert lines[f"wavekv_worker_generated_tokens_total{w}"] >= 4
    hits, misses = result["stats"]["hits"], result["stats"]["misses"]
    assert hits + misses > 0
    assert lines[f"wavekv_worker_wave_buffer_hit_ratio{w}"] == pytest.approx(hits / (hits + misses))
