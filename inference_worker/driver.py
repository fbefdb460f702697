"""Spreads generation requests over InferenceWorker actors and gathers results in input order."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import ray
from tqdm import tqdm

from inference_worker.actor import InferenceWorker, WorkerOptions

log = logging.getLogger(__name__)


@dataclass(slots=True)
class JobOutcome:
    results: list[dict[str, Any]]  # successful results, in input order
    errors: dict[str, str] = field(default_factory=dict)  # request id -> error message


def init_ray(address: str | None) -> bool:
    """Join `address` (e.g. under `ray job submit`) or start a local Ray on loopback.

    Returns True when this call started Ray (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=True)
    return True


class JobDriver:
    """Owns N actors for the duration of a job; one request per actor call, dynamic dispatch."""

    def __init__(self, options: WorkerOptions, workers: int, ray_address: str | None) -> None:
        self.owns_ray = init_ray(ray_address)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
        log.info("starting %d InferenceWorker actor(s) with %s", workers, resources)
        actor_cls = InferenceWorker.options(**resources)  # type: ignore[attr-defined]
        self.actors = [actor_cls.remote(options) for _ in range(workers)]
        ray.get([a.describe.remote() for a in self.actors])  # surface load errors now

    def run(self, records: list[dict[str, Any]], run: dict[str, Any]) -> JobOutcome:
        pending: dict[Any, tuple[int, Any]] = {}
        queue = list(enumerate(records))
        done: dict[int, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        idle = list(self.actors)
        with tqdm(total=len(records), desc="requests", unit="req") as bar:
            while queue or pending:
                while idle and queue:
                    actor = idle.pop()
                    index, record = queue.pop(0)
                    pending[actor.generate.remote([record], run)] = (index, actor)
                ready, _ = ray.wait(list(pending), num_returns=1)
                index, actor = pending.pop(ready[0])
                idle.append(actor)
                try:
                    done[index] = ray.get(ready[0])[0]
                except ray.exceptions.RayError as exc:
                    errors[str(records[index]["id"])] = _short(exc)
                bar.update(1)
        return JobOutcome([done[i] for i in sorted(done)], errors)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        if self.owns_ray:
            ray.shutdown()

    def __enter__(self) -> JobDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(exc: BaseException) -> str:
    """The root cause of a Ray task error, one line."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"
