"""End-to-end generation with the real default model and a real store (issue 4, section 5)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client import ClientOptions, KVStoreClient
from inference_worker.engine import GenerationEngine, GenerationRequest, GrpcStoreLink
from inference_worker.eval.scoring import score
from inference_worker.retroinfer import RetroInferConfig
from kvstore_server.embedded import EmbeddedStore
from tests.engine_fixtures import WatchingLink, essay_tokens, natural_tokens, passkey_sample

pytestmark = pytest.mark.slow


@pytest.fixture
def engine(default_engine: GenerationEngine) -> GenerationEngine:
    return default_engine


@pytest.fixture
def client(store_server: EmbeddedStore, namespace: str) -> Iterator[KVStoreClient]:
    with KVStoreClient(
        store_server.target, ClientOptions(namespace=namespace, timeout_s=30.0)
    ) as c:
        c.wait_ready()
        yield c


def test_passkey_at_4k_through_the_store(engine: GenerationEngine, client: KVStoreClient) -> None:
    sample = passkey_sample(engine, 4096)
    link = WatchingLink(client)
    request = GenerationRequest("pk", sample.token_ids, max_new_tokens=sample.max_new_tokens)
    (result,) = engine.generate([request], attention="retroinfer", store=link)
    assert score(result.text, sample.answers, sample.metric) == 100.0, (result.text, sample.answers)
    stats = result.stats
    assert stats["num_clusters"] > 0 and stats["store_fetch_rpcs"] > 0
    # at most one fetch per layer per decode step, never one per head or sequence
    assert stats["store_fetch_rpcs"] <= engine.loaded.config.num_layers * stats["decode_steps"]
    assert stats["store_fetched_bytes"] > 0 and 0.0 <= stats["hit_ratio"] <= 1.0
    assert link.listed_during_decode is not None and len(link.listed_during_decode) == 1
    assert link.listed_during_decode[0].startswith("pk-")
    assert client.list_sequences() == []


# Issue 4: >= 98% teacher-forced agreement at the DEFAULT budgets. At this 3K-token prompt the
# paper's 1.8% is 3 of 184 clusters (measured 0.89 here); the default floor of
# RetroInferConfig.min_retrieval_clusters lifts it (measurements in docs/retroinfer.md and
# benchmarks/results/agreement_cpu.json; this prompt is window 0 there).
AGREEMENT_TARGET = 0.98


def test_teacher_forced_agreement_with_full_attention(engine: GenerationEngine) -> None:
    tokens = natural_tokens(engine, 3000, 3000 + 64)
    prompt, forced = tokens[:3000], tokens[3000:]
    full = engine.forced_decode(prompt, forced, attention="full")
    assert len(full) == 64
    retro = engine.forced_decode(prompt, forced, attention="retroinfer")
    agree = sum(a == b for a, b in zip(full, retro, strict=True)) / len(full)
    assert agree >= AGREEMENT_TARGET, (
        f"default budgets: agreement {agree:.3f} over {len(full)} steps"
    )


def test_full_retrieval_budget_reproduces_full_attention(
    engine: GenerationEngine, client: KVStoreClient
) -> None:
    prompt = essay_tokens(engine, 1500, seed=11)
    request = GenerationRequest("same", prompt, max_new_tokens=24)
    (full,) = engine.generate([request], attention="full")
    everything = RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0)
    (retro,) = engine.generate(
        [request], attention="retroinfer", retro_config=everything, store=GrpcStoreLink(client)
    )
    assert retro.stats["num_clusters"] > 0
    assert retro.token_ids == full.token_ids


def test_batched_requests_match_one_by_one(engine: GenerationEngine) -> None:
    prompt = essay_tokens(engine, 1200, seed=5)
    reqs = [GenerationRequest(f"r{i}", prompt, max_new_tokens=6 + i) for i in range(2)]
    together = engine.generate(reqs, attention="retroinfer")
    alone = [engine.generate([r], attention="retroinfer")[0] for r in reqs]
    assert together[0].stats["batch_size"] == 2
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [len(r.token_ids) for r in together] == [6, 7]


def test_failure_mid_decode_releases_the_sequence(
    engine: GenerationEngine, client: KVStoreClient
) -> None:
    def boom() -> None:
        raise RuntimeError("injected failure in the decode loop")

    link = WatchingLink(client, hook_at=5, hook=boom)
    request = GenerationRequest("fail", essay_tokens(engine, 1200), max_new_tokens=8)
    with pytest.raises(RuntimeError, match="injected failure"):
        engine.generate([request], attention="retroinfer", store=link)
    assert link.listed_during_decode and link.listed_during_decode[0].startswith("fail-")
    assert client.list_sequences() == []


def test_sampling_is_seeded(engine: GenerationEngine) -> None:
    prompt = essay_tokens(engine, 200)
    req = GenerationRequest("s", prompt, max_new_tokens=8, temperature=0.9, top_p=0.9, seed=1)
    a = engine.generate([req], attention="full")[0]
    b = engine.generate([req], attention="full")[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 8


def test_bad_requests_are_rejected(engine: GenerationEngine) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationRequest("x", "hi", max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationRequest("x", "hi", top_p=0.0)
    too_long = GenerationRequest("long", [1] * 9000, max_new_tokens=4)
    with pytest.raises(ValueError, match="exceed the model's context"):
        engine.generate([too_long], attention="full")
    with pytest.raises(ValueError, match="attention"):
        engine.generate([GenerationRequest("x", "hi")], attention="sparse")  # type: ignore[arg-type]
