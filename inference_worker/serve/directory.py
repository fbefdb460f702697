"""One /metrics for all replicas of the server.

Every replica serves its own registry (inference_worker.metrics) and registers its URL in a named
Ray actor, the directory. The server's /metrics, whichever replica answers it, reads every
registered endpoint and merges the families (each series is labelled with its `worker`), so one
scrape of the server sees all replicas. An endpoint that does not answer is left out of that
scrape and dropped from the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import Iterable, Iterator

import ray
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

NAMESPACE = "wavekv"  # Ray namespace of the directory actor
SCRAPE_TIMEOUT_S = 3.0


@ray.remote(num_cpus=0)
class MetricsDirectory:
    """worker id -> metrics URL of the live replicas of one server application."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}

    def register(self, worker: str, url: str) -> None:
        self.urls[worker] = url

    def unregister(self, worker: str) -> None:
        self.urls.pop(worker, None)

    def list(self) -> dict[str, str]:
        return dict(self.urls)


def directory_name(app_name: str) -> str:
    return f"wavekv-metrics-{app_name}"


def metrics_directory(app_name: str) -> ray.actor.ActorHandle:
    """The application's directory, created by whoever asks first; it outlives replicas (it is
    detached), `wavekv serve` removes it on shutdown."""
    options = {"name": directory_name(app_name), "namespace": NAMESPACE, "get_if_exists": True}
    return MetricsDirectory.options(lifetime="detached", **options).remote()  # type: ignore[attr-defined]


def remove_directory(app_name: str) -> None:
    with contextlib.suppress(ValueError):  # never created
        ray.kill(ray.get_actor(directory_name(app_name), namespace=NAMESPACE))


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        return bytes(response.read()).decode("utf-8")


async def scrape(directory: ray.actor.ActorHandle) -> list[str]:
    """The exposition text of every registered replica (unreachable ones are unregistered)."""
    urls: dict[str, str] = await directory.list.remote()
    texts = await asyncio.gather(
        *(asyncio.to_thread(_fetch, url) for url in urls.values()), return_exceptions=True
    )
    found = []
    for (worker, url), text in zip(urls.items(), texts, strict=True):
        if isinstance(text, BaseException):
            log.warning("metrics of worker %s at %s unreachable: %s", worker, url, text)
            directory.unregister.remote(worker)
        else:
            found.append(text)
    return found


def merge(texts: Iterable[str]) -> Iterator[Metric]:
    """Families of several expositions, samples of equal family names put together."""
    merged: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = family
            else:
                known.samples.extend(family.samples)
    yield from merged.values()


class MergedCollector:
    """A prometheus_client collector over already-scraped texts (for generate_latest)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        return merge(self.texts)
