"""The InferenceWorker Ray actor: holds one model and its wave buffers, serves generation calls,
and serves its Prometheus metrics (inference_worker.metrics) on its own port."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import ray

from inference_worker.metrics import TimedStoreLink, WorkerMetrics, serve_registry
from inference_worker.settings import WorkerMetricsSettings, load

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class WorkerOptions:
    """Everything an actor needs to build its engine and its store link (picklable)."""

    model_path: str | None = None  # None -> the default model (SmolLM2-135M-Instruct GGUF)
    store_address: str | None = None  # HOST:PORT of kvstore_server; None only for attention="full"
    namespace: str = "wavekv"
    token: str | None = None
    device: str | None = None  # None -> cuda when present, else cpu


def worker_id() -> str:
    """The actor's id inside Ray (short), else this process's pid."""
    if ray.is_initialized():
        actor = ray.get_runtime_context().get_actor_id()
        if actor:
            return actor[:12]
    return f"pid{os.getpid()}"


class InferenceWorkerImpl:
    """Plain-Python body of the actor (also usable in-process, e.g. by tests and the demo)."""

    def __init__(self, options: WorkerOptions) -> None:
        from inference_worker.engine import GenerationEngine
        from inference_worker.engine.grpc_link import connect_store

        self.worker_options = options
        self.engine = GenerationEngine.load(options.model_path, options.device)
        self.metrics = WorkerMetrics(worker_id())
        self.metrics_url = serve_registry(self.metrics, load(WorkerMetricsSettings))
        link = (
            connect_store(options.store_address, namespace=options.namespace, token=options.token)
            if options.store_address
            else None
        )
        self.store = TimedStoreLink(link, self.metrics) if link is not None else None

    def describe(self) -> dict[str, Any]:
        return {
            "worker": self.metrics.worker,
            "device": str(self.engine.device),
            "model": self.engine.model_name,
            "metrics_url": self.metrics_url,
        }

    def generate(self, records: list[dict[str, Any]], run: dict[str, Any]) -> list[dict[str, Any]]:
        """Generate for `records` (JSONL input dicts) as one engine batch; `run` holds attention
        and budgets. Returns, in order, a result dict or {"id", "error"} per record."""
        from inference_worker.engine import GenerationRequest

        outputs: list[dict[str, Any]] = []
        requests = []
        for record in records:
            try:
                requests.append(
                    GenerationRequest.from_dict(
                        record, default_max_new_tokens=run["max_new_tokens"]
                    )
                )
                outputs.append({})
            except (ValueError, TypeError) as exc:
                outputs.append({"id": str(record.get("id")), "error": f"ValueError: {exc}"})
        results = iter(self._generate(requests, run))
        return [output or next(results) for output in outputs]

    def _generate(self, requests: list[Any], run: dict[str, Any]) -> list[dict[str, Any]]:
        """One engine call for the batch; if a request is refused (ValueError, e.g. too long for
        the model's context) the others still run, each on its own."""
        self.metrics.queue(waiting=0, running=len(requests))
        start = time.perf_counter()
        try:
            try:
                results = [r.to_dict() for r in self._engine_generate(requests, run)]
            except ValueError:
                results = [self._one(request, run) for request in requests]
        finally:
            self.metrics.queue(waiting=0, running=0)
        elapsed = time.perf_counter() - start
        for request, result in zip(requests, results, strict=True):
            if "error" not in result:
                self._observe(result, request.max_new_tokens, elapsed)
        return results

    def _one(self, request: Any, run: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._engine_generate([request], run)[0].to_dict()
        except ValueError as exc:
            return {"id": request.id, "error": f"ValueError: {exc}"}

    def _engine_generate(self, requests: list[Any], run: dict[str, Any]) -> list[Any]:
        """The batch on an engine configured for `run` (the loaded weights are shared)."""
        from inference_worker.engine import EngineConfig
        from inference_worker.retroinfer import RetroInferConfig

        config = EngineConfig(
            attention=run["attention"],
            retro=RetroInferConfig(**run.get("retro", {})),
            max_batch_size=max(len(requests), 1),
        )
        return self.engine.with_config(config, self.store).generate(requests)

    def _observe(self, result: dict[str, Any], max_new_tokens: int, elapsed_s: float) -> None:
        stats = result["stats"]
        new = len(result["token_ids"])
        reason = stats.get("finish_reason") or ("length" if new >= max_new_tokens else "stop")
        self.metrics.tokens(new)
        if new > 1:
            self.metrics.token_gaps(float(stats.get("decode_s", 0.0)) / (new - 1), new - 1)
        ttft = float(stats.get("time_to_first_token_s", stats.get("prefill_s", 0.0)))
        self.metrics.finished(stats, reason, ttft, elapsed_s)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@ray.remote
class InferenceWorker(InferenceWorkerImpl):
    """Ray actor: one per GPU (or per CPU slot on machines without one)."""
