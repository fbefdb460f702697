"""The InferenceWorker Ray actor: holds one model and its wave buffers, serves generation calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerOptions:
    """Everything an actor needs to build its engine and its store link (picklable)."""

    model_path: str | None = None  # None -> the default model (SmolLM2-135M-Instruct GGUF)
    store_address: str | None = None  # HOST:PORT of kvstore_server; None only for attention="full"
    namespace: str = "wavekv"
    token: str | None = None
    device: str | None = None  # None -> cuda when present, else cpu


class InferenceWorkerImpl:
    """Plain-Python body of the actor (also usable in-process, e.g. by tests and the demo)."""

    def __init__(self, options: WorkerOptions) -> None:
        from inference_worker.engine import GenerationEngine
        from inference_worker.engine.store_link import connect_store

        self.worker_options = options
        self.engine = GenerationEngine.load(options.model_path, options.device)
        self.store = (
            connect_store(options.store_address, namespace=options.namespace, token=options.token)
            if options.store_address
            else None
        )

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.engine.device), "model": self.engine.model_name}

    def generate(self, records: list[dict[str, Any]], run: dict[str, Any]) -> list[dict[str, Any]]:
        """Generate for `records` (JSONL input dicts); `run` holds attention and budgets."""
        from inference_worker.engine import EngineConfig, GenerationRequest
        from inference_worker.retroinfer import RetroInferConfig

        requests = [
            GenerationRequest.from_dict(r, default_max_new_tokens=run["max_new_tokens"])
            for r in records
        ]
        config = EngineConfig(
            attention=run["attention"],
            retro=RetroInferConfig(**run.get("retro", {})),
            max_batch_size=max(len(requests), 1),
        )
        results = self.engine.with_config(config, self.store).generate(requests)
        return [r.to_dict() for r in results]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@ray.remote
class InferenceWorker(InferenceWorkerImpl):
    """Ray actor: one per GPU (or per CPU slot on machines without one)."""
