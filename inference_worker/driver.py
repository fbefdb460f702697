"""Spreads generation requests over InferenceWorker actors, a batch per actor call, and gathers the
results in input order.

Each call hands an actor up to `batch_size` requests, which its engine decodes together; idle
actors take the next batch (dynamic dispatch, like Ray's ActorPool). Before any actor starts, the
driver checks that the cluster can ever hold `--workers` actors, and it bounds the wait for them
to start, so an oversized job fails at once with the numbers instead of hanging.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from tqdm import tqdm

from inference_worker.actor import InferenceWorker, WorkerOptions
from inference_worker.settings import JobSettings

log = logging.getLogger(__name__)


class PlacementError(RuntimeError):
    """The cluster cannot run the requested actors (too few resources, or not in time)."""


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


def actor_resources() -> tuple[str, dict[str, float]]:
    """What one InferenceWorker reserves: a GPU when the cluster has any, else a CPU."""
    if ray.cluster_resources().get("GPU", 0.0) >= 1:
        return "GPU", {"num_gpus": 1}
    return "CPU", {"num_cpus": 1}


def check_capacity(workers: int, kind: str) -> None:
    """Refuse at once when the whole cluster holds fewer `kind` than `workers` actors need."""
    total = ray.cluster_resources().get(kind, 0.0)
    if workers > total:
        raise PlacementError(
            f"--workers {workers} needs {workers} {kind} (one per InferenceWorker actor), but "
            f"the Ray cluster has {total:g} {kind} in total; use --workers {int(total)} or "
            f"fewer, or add nodes"
        )


class JobDriver:
    """Owns N actors for the duration of a job; a batch of requests per actor call."""

    def __init__(self, options: WorkerOptions, settings: JobSettings) -> None:
        self.settings = settings
        self.owns_ray = init_ray(settings.ray_address)
        self.actors: list[Any] = []
        try:
            kind, resources = actor_resources()
            check_capacity(settings.workers, kind)
            log.info("starting %d InferenceWorker actor(s) with %s", settings.workers, resources)
            actor_cls = InferenceWorker.options(**resources)  # type: ignore[attr-defined]
            self.actors = [actor_cls.remote(options) for _ in range(settings.workers)]
            self._wait_started(kind)
        except BaseException:
            self.close()
            raise

    def _wait_started(self, kind: str) -> None:
        """Surface load errors now; bound the wait for resources other work may hold."""
        pending = [a.describe.remote() for a in self.actors]
        timeout = self.settings.placement_timeout_s
        ready, waiting = ray.wait(pending, num_returns=len(pending), timeout=timeout)
        if waiting:
            free = ray.available_resources().get(kind, 0.0)
            total = ray.cluster_resources().get(kind, 0.0)
            raise PlacementError(
                f"{len(waiting)} of {len(pending)} InferenceWorker actors did not start within "
                f"{timeout:g}s: {free:g} of {total:g} {kind} are free (other jobs or a running "
                f"`wavekv serve` may hold them)"
            )
        for info in ray.get(ready):
            log.info("actor ready: %s", info)

    def run(self, records: list[dict[str, Any]], run: dict[str, Any]) -> JobOutcome:
        batches = list(_batches(list(enumerate(records)), self.settings.batch_size))
        pending: dict[Any, tuple[list[tuple[int, dict[str, Any]]], Any]] = {}
        done: dict[int, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        idle = list(self.actors)
        with tqdm(total=len(records), desc="requests", unit="req") as bar:
            while batches or pending:
                while idle and batches:
                    actor, batch = idle.pop(), batches.pop(0)
                    call = actor.generate.remote([r for _, r in batch], run)
                    pending[call] = (batch, actor)
                ready, _ = ray.wait(list(pending), num_returns=1)
                batch, actor = pending.pop(ready[0])
                idle.append(actor)
                try:
                    outputs = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    outputs = [{"id": str(r["id"]), "error": _short(exc)} for _, r in batch]
                for (index, _), output in zip(batch, outputs, strict=True):
                    if "error" in output:
                        errors[output["id"]] = output["error"]
                    else:
                        done[index] = output
                        _report_unindexed(output)
                bar.update(len(batch))
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


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _report_unindexed(result: dict[str, Any]) -> None:
    """RetroInfer skips the index below its threshold (full attention then): say so."""
    stats = result.get("stats", {})
    if stats.get("attention") == "retroinfer" and stats.get("indexed") is False:
        log.warning(
            "request %s was not indexed (ran with full attention): %s",
            result["id"],
            stats.get("not_indexed_reason", "no reason given"),
        )


def _short(exc: BaseException) -> str:
    """The root cause of a Ray task error, one line."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"
