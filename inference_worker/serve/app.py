"""The Ray Serve application of `wavekv serve`: N replicas, each one engine on one GPU (one CPU
where the cluster has no GPU), sharing the KV store.

`build_app(settings)` is what `wavekv serve` runs; `app_builder(args)` is the same application
for Ray's declarative deployment (`serve deploy` of docker/serve.yaml, import path
`inference_worker.serve.app:app_builder`), its args being ServeSettings fields with the
WAVEKV_* environment of the cluster underneath.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
from prometheus_client import generate_latest
from ray import serve
from ray.serve import Application

from inference_worker.actor import worker_id
from inference_worker.metrics import TimedStoreLink, WorkerMetrics, serve_registry
from inference_worker.serve.api import build_api
from inference_worker.serve.chat_template import ChatTemplate
from inference_worker.serve.directory import MergedCollector, metrics_directory, scrape
from inference_worker.serve.engine_loop import EngineLoop
from inference_worker.serve.server import ModelCard, ServerCore
from inference_worker.settings import ServeSettings, WorkerMetricsSettings, load

log = logging.getLogger(__name__)


def served_name(settings: ServeSettings, model_path: Path) -> str:
    """`--served-model-name`, else the model file's name without `.gguf` (or the folder's)."""
    if settings.served_model_name:
        return settings.served_model_name
    return model_path.stem if model_path.suffix == ".gguf" else model_path.name


class Replica:
    """One engine, its loop thread, its metrics endpoint and the API core."""

    def __init__(self, settings: ServeSettings) -> None:
        from inference_worker.engine import EngineConfig, GenerationEngine, connect_store

        self.settings = settings
        self.metrics = WorkerMetrics(worker_id())
        self.metrics_url = serve_registry(self.metrics, load(WorkerMetricsSettings))
        token = settings.token_file.read_text().strip() if settings.token_file else None
        link = (
            TimedStoreLink(connect_store(settings.store, settings.namespace, token), self.metrics)
            if settings.store
            else None
        )
        config = EngineConfig(attention=settings.attention, max_batch_size=settings.max_batch_size)
        self.engine = GenerationEngine.load(settings.model, None, config, link)
        self.link = link
        self.loop = EngineLoop(self.engine, self.metrics)
        path = self.engine.loaded.path
        tokenizer = self.engine.tokenizer
        source = tokenizer.chat_template
        template = (
            ChatTemplate(source, tokenizer.hf.bos_token or "", tokenizer.hf.eos_token or "")
            if source
            else None
        )
        card = ModelCard(
            served_name(settings, path),
            self.engine.max_model_len,
            tokenizer.vocab_size,
            settings.default_max_tokens,
        )
        self.core = ServerCore(self.loop, tokenizer, card, template)
        log.info("replica %s serves %s, metrics at %s", self.metrics.worker, card.name,
                 self.metrics_url)  # fmt: skip

    def healthy(self) -> bool:
        return self.loop.running()

    def close(self) -> None:
        self.loop.close()
        if self.link is not None:
            self.link.close()


@serve.ingress()
class WaveKVServer:
    """The Serve deployment: one Replica per Serve replica; its ASGI app is built after the
    constructor (`__serve_build_asgi_app__`), over that replica's state."""

    def __init__(self, settings: ServeSettings) -> None:
        self.replica = Replica(settings)
        self.directory = metrics_directory(settings.app_name)
        self.directory.register.remote(self.replica.metrics.worker, self.replica.metrics_url)

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self.replica.core, self.metrics_text, self.replica.healthy)

    async def metrics_text(self) -> bytes:
        """Every replica's worker metrics in one exposition."""
        texts = await scrape(self.directory)
        return bytes(generate_latest(MergedCollector(texts)))  # type: ignore[arg-type]

    def check_health(self) -> None:
        """Serve's replica health check: a dead engine thread restarts the replica."""
        if not self.replica.healthy():
            raise RuntimeError("the engine loop of this replica stopped")

    def __del__(self) -> None:
        self.directory.unregister.remote(self.replica.metrics.worker)
        self.replica.close()


def replica_resources() -> dict[str, float]:
    """One GPU per replica where the cluster has GPUs, else one CPU."""
    if ray.cluster_resources().get("GPU", 0.0) >= 1:
        return {"num_gpus": 1}
    return {"num_cpus": 1}


def build_app(settings: ServeSettings) -> Application:
    deployment = serve.deployment(
        WaveKVServer,
        name="WaveKVServer",
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options=replica_resources(),
    )
    return deployment.bind(settings)  # type: ignore[attr-defined]


def app_builder(args: dict[str, Any]) -> Application:
    """For `serve deploy` / `serve run inference_worker.serve.app:app_builder key=value`."""
    return build_app(load(ServeSettings, args))
