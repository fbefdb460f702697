"""The engine's fast path on the GPU (skipped without CUDA): CUDA graphs and the Triton step under
continuous batching, and the product's store link against the in-process reference link.
Random-weight models of SmolLM2's and Gemma 3 270M's geometry (bf16): these compare paths token
for token, they do not judge text."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from benchmarks.random_model import random_engine
from inference_worker.engine import (
    EngineConfig,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    connect_store,
)
from inference_worker.engine.store_link import InProcessStoreLink, StoreLink
from inference_worker.retroinfer import RetroInferConfig
from kvstore_server.embedded import EmbeddedStore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

SHAPES = [(1500, 9), (2300, 5), (1200, 12), (3100, 6)]  # prompt length, new tokens


@pytest.fixture(scope="module", params=["random-smollm2", "random-gemma3-270m"])
def engine(request: pytest.FixtureRequest) -> GenerationEngine:
    """SmolLM2's geometry (every layer global) and Gemma 3 270M's (hybrid, head_dim 256)."""
    return random_engine(request.param, torch.device("cuda"))


@pytest.fixture
def link(store_server: EmbeddedStore, namespace: str) -> Iterator[StoreLink]:
    link = connect_store(store_server.target, namespace=namespace, same_host="require")
    yield link
    link.close()


def _requests(engine: GenerationEngine) -> list[GenerationRequest]:
    gen = torch.Generator().manual_seed(7)
    vocab = engine.loaded.config.vocab_size
    return [
        GenerationRequest(f"r{i}", torch.randint(vocab, (n,), generator=gen).tolist(), m)
        for i, (n, m) in enumerate(SHAPES)
    ]


def _run(engine: GenerationEngine, config: EngineConfig, link: StoreLink) -> list[GenerationResult]:
    results = engine.with_config(config, link).generate(_requests(engine))
    assert all(r.stats.get("indexed", True) for r in results), [r.stats for r in results]
    return results


def test_graphed_continuous_batching_equals_eager(engine: GenerationEngine) -> None:
    """2 slots for 4 requests of different lengths (slots freed and reused): the captured steps
    give the eager steps' tokens and statistics, for both attentions."""
    for attention in ("full", "retroinfer"):
        graphed = EngineConfig(attention=attention, max_batch_size=2, prefill_chunk=1024)
        eager = EngineConfig(attention=attention, max_batch_size=2, prefill_chunk=1024,
                             cuda_graphs=False)  # fmt: skip
        a = _run(engine, graphed, InProcessStoreLink(host_memory=True))
        b = _run(engine, eager, InProcessStoreLink(host_memory=True))
        assert [r.token_ids for r in a] == [r.token_ids for r in b], attention
        if attention == "retroinfer":
            assert [r.stats["misses"] for r in a] == [r.stats["misses"] for r in b]


def test_store_process_link_equals_in_process_link(
    engine: GenerationEngine, link: StoreLink
) -> None:
    """The product path (clusters in the store's shared-memory arena, misses read in place over
    PCIe) retrieves and generates exactly what the in-process pinned-host source does."""
    config = EngineConfig(retro=RetroInferConfig(), max_batch_size=3, prefill_chunk=1024)
    product = _run(engine, config, link)
    reference = _run(engine, config, InProcessStoreLink(host_memory=True))
    assert [r.token_ids for r in product] == [r.token_ids for r in reference]
    for p, r in zip(product, reference, strict=True):
        assert (p.stats["hits"], p.stats["misses"]) == (r.stats["hits"], r.stats["misses"])
