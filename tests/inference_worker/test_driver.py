"""JobDriver on a real local Ray with the real default model: results in input order, requests
batched per actor call (the engine decodes each batch together), and an oversized job refused
before any actor starts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import ray

from inference_worker.actor import WorkerOptions
from inference_worker.driver import JobDriver, PlacementError
from inference_worker.settings import JobSettings, load

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def settings(**flags: str) -> JobSettings:
    return load(JobSettings, {"input": "i", "output": "o", "attention": "retroinfer"} | flags)


def test_oversized_job_is_refused_before_any_actor(local_ray: None) -> None:
    with pytest.raises(PlacementError, match=r"--workers 3 needs 3 CPU .* has 2 CPU in total"):
        JobDriver(WorkerOptions(), settings(workers="3"))
    assert ray.available_resources().get("CPU") == 2  # no actor holds a CPU


def test_batches_per_actor_in_input_order(local_ray: None) -> None:
    # five prompts of one length: RetroInfer batches equal lengths (cohorts) in the engine
    records = [{"id": str(i), "prompt": f"Number {i} is followed by"} for i in range(5)]
    run = {"attention": "retroinfer", "max_new_tokens": 3, "retro": {}}
    with JobDriver(WorkerOptions(), settings(workers="1", batch_size="2")) as driver:
        outcome = driver.run(records, run)
    assert outcome.errors == {}
    assert [r["id"] for r in outcome.results] == [str(i) for i in range(5)]
    assert [r["stats"]["batch_size"] for r in outcome.results] == [2, 2, 2, 2, 1]
