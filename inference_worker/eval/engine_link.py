"""The only module that touches the generation engine, RetroInfer config and store SDK.

Imports are lazy so that the task generators, scoring and reporting work (and are
tested) without the engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from inference_worker.eval.config import parse_store
from inference_worker.eval.prompt import Sample
from inference_worker.eval.runner import RunSpec


def load_engine(model_path: str | None, device: str | None, mass_every: int = 0) -> Any:
    from inference_worker.engine import GenerationEngine

    return EvalEngine(GenerationEngine.load(model_path, device), mass_every)


class EvalEngine:
    """The suite's view of the engine: `generate(requests, attention, retro_config, store)`
    runs the requests on an engine of that configuration over the one loaded model.
    mass_every: RetroInfer runs sample where each indexed layer's attention mass falls."""

    def __init__(self, engine: Any, mass_every: int = 0) -> None:
        self.engine = engine
        self.mass_every = mass_every
        self.tokenizer = engine.tokenizer
        self.device = engine.device
        self.model_name = engine.model_name

    def generate(self, requests: list[Any], attention: str, retro_config: Any, store: Any) -> Any:
        from inference_worker.engine import EngineConfig
        from inference_worker.retroinfer import StepOptions

        config = EngineConfig(
            attention=attention,  # type: ignore[arg-type]
            retro=retro_config or default_retro_config(),
            max_batch_size=max(len(requests), 1),
            step_options=StepOptions(mass_every=self.mass_every),
        )
        return self.engine.with_config(config, store).generate(requests)


def make_request(sample: Sample, request_id: str, max_new_tokens: int) -> Any:
    from inference_worker.engine import GenerationRequest

    return GenerationRequest(
        id=request_id,
        prompt=list(sample.token_ids),
        max_new_tokens=max_new_tokens,
        temperature=0.0,
    )


def default_retro_config() -> Any:
    from inference_worker.retroinfer import RetroInferConfig

    return RetroInferConfig()


def default_retrieval_budget() -> float:
    return float(default_retro_config().retrieval_budget)


def default_retrieval_floor() -> int:
    return int(default_retro_config().min_retrieval_clusters)


def retro_config(
    spec: RunSpec, defer_misses: bool = False, centroid_format: str | None = None
) -> Any:
    """RetroInfer's config for one run: the default config (what users get, retrieval floor
    included) for the default run, with its floor replaced when `spec.floor` is set; a sweep
    point's budget with its floor (0: the paper's pure fraction, so the sweep is not flat at
    short contexts where the floor would decide n_ret). `defer_misses`: the opt-in stall-free
    mode (a missed cluster is estimated in its step and exact from the next).
    `centroid_format`: the centroid storage (None: the default config's)."""
    config = dataclasses.replace(default_retro_config(), defer_misses=defer_misses)
    if centroid_format is not None:
        config = dataclasses.replace(config, centroid_format=centroid_format)
    if spec.budget is not None:
        config = dataclasses.replace(config, retrieval_budget=spec.budget)
    if spec.floor is not None:
        config = dataclasses.replace(config, min_retrieval_clusters=spec.floor)
    return config


def retrieved_fraction(stats: dict[str, Any]) -> float | None:
    """Clusters retrieved exactly per step / clusters indexed, from a result's stats (the
    engine's `retrieved_fraction` when it reports one); None without an index."""
    if stats.get("retrieved_fraction") is not None:
        return float(stats["retrieved_fraction"])
    retrieved, clusters = stats.get("retrieval_clusters"), stats.get("num_clusters")
    if not retrieved or not clusters:
        return None
    return float(retrieved) / float(clusters)


def open_store(address: str | None) -> Any:
    """A store link to the KV store at HOST:PORT, or None for the engine's in-process store."""
    if address is None:
        return None
    from inference_worker.engine import connect_store

    host, port = parse_store(address)
    return connect_store(f"{host}:{port}", namespace="wavekv-eval")


def model_file(engine: Any) -> str:
    """The file (or folder) name of the engine's model."""
    return str(getattr(engine, "model_name", "unknown"))


def device_name(engine: Any) -> str:
    """A readable name of the device the engine runs on."""
    device = str(getattr(engine, "device", "unknown"))
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if device.startswith("cpu"):
        import os

        return f"cpu ({os.cpu_count()} cores)"
    return device


def context_length(model: str) -> int:
    """Tokens a model (name or path) can hold, prompt + answer; read from its config alone,
    so a run that cannot fit stops before the model loads."""
    from inference_worker.model import load_config

    return int(load_config(model).max_position_embeddings)
