"""End-to-end generation with the real default model and a real store (issue 4, section 5)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from client import ClientOptions, KVStoreClient
from inference_worker.engine import EngineConfig, GenerationEngine, GenerationRequest, GrpcStoreLink
from inference_worker.eval.scoring import score
from inference_worker.retroinfer import RetroInferConfig, StepOptions
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
    (result,) = engine.with_config(EngineConfig(), link).generate([request])
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
FULL = EngineConfig(attention="full")


def test_teacher_forced_agreement_with_full_attention(engine: GenerationEngine) -> None:
    tokens = natural_tokens(engine, 3000, 3000 + 64)
    prompt, forced = tokens[:3000], tokens[3000:]
    full = engine.with_config(FULL).forced_decode(prompt, forced)
    assert len(full) == 64
    retro = engine.with_config(EngineConfig()).forced_decode(prompt, forced)
    agree = sum(a == b for a, b in zip(full, retro, strict=True)) / len(full)
    assert agree >= AGREEMENT_TARGET, (
        f"default budgets: agreement {agree:.3f} over {len(full)} steps"
    )


def test_full_retrieval_budget_reproduces_full_attention(
    engine: GenerationEngine, client: KVStoreClient
) -> None:
    prompt = essay_tokens(engine, 1500, seed=11)
    request = GenerationRequest("same", prompt, max_new_tokens=24)
    (full,) = engine.with_config(FULL).generate([request])
    everything = EngineConfig(retro=RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0))
    (retro,) = engine.with_config(everything, GrpcStoreLink(client)).generate([request])
    assert retro.stats["num_clusters"] > 0
    assert retro.token_ids == full.token_ids


def test_batched_requests_match_one_by_one(engine: GenerationEngine) -> None:
    prompt = essay_tokens(engine, 1200, seed=5)
    reqs = [GenerationRequest(f"r{i}", prompt, max_new_tokens=6 + i) for i in range(2)]
    retro = engine.with_config(EngineConfig())
    together = retro.generate(reqs)
    alone = [retro.generate([r])[0] for r in reqs]
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
        engine.with_config(EngineConfig(), link).generate([request])
    assert link.listed_during_decode and link.listed_during_decode[0].startswith("fail-")
    assert client.list_sequences() == []


def test_sampling_is_seeded(engine: GenerationEngine) -> None:
    prompt = essay_tokens(engine, 200)
    req = GenerationRequest("s", prompt, max_new_tokens=8, temperature=0.9, top_p=0.9, seed=1)
    a = engine.with_config(FULL).generate([req])[0]
    b = engine.with_config(FULL).generate([req])[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 8


def test_bad_requests_are_rejected(engine: GenerationEngine) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationRequest("x", "hi", max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationRequest("x", "hi", top_p=0.0)
    too_long = GenerationRequest("long", [1] * 9000, max_new_tokens=4)
    with pytest.raises(ValueError, match="exceed the context of 8192 tokens"):
        engine.with_config(FULL).generate([too_long])
    with pytest.raises(ValueError, match="attention must be one of"):
        EngineConfig(attention="sparse")  # type: ignore[arg-type]


def test_continuous_batching_matches_one_at_a_time(engine: GenerationEngine) -> None:
    """Full attention, 2 slots: prompts of different lengths decode together, the third request
    takes the slot the first one leaves; each greedy output equals the request's run alone."""
    config = EngineConfig(attention="full", max_batch_size=2, prefill_chunk=256)
    shapes = [(300, 10), (520, 4), (410, 7)]
    reqs = [
        GenerationRequest(f"c{i}", essay_tokens(engine, n, seed=i), max_new_tokens=m)
        for i, (n, m) in enumerate(shapes)
    ]
    together = engine.with_config(config).generate(reqs)
    alone = [engine.with_config(config).generate([r])[0] for r in reqs]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [len(r.token_ids) for r in together] == [10, 4, 7]
    assert all(r.stats["finish_reason"] == "length" for r in together)


def test_step_api_streams_tokens_and_aborts(engine: GenerationEngine) -> None:
    full = engine.with_config(EngineConfig(attention="full", max_batch_size=2))
    full.add_request(GenerationRequest("a", essay_tokens(engine, 200, seed=1), max_new_tokens=6))
    full.add_request(GenerationRequest("b", essay_tokens(engine, 250, seed=2), max_new_tokens=50))
    with pytest.raises(ValueError, match="already in the engine"):
        full.add_request(GenerationRequest("a", "again"))
    streamed: dict[str, list[int]] = {"a": [], "b": []}
    finished = {}
    while full.has_unfinished_requests():
        for out in full.step():
            streamed[out.request_id] += out.new_token_ids
            if out.finished:
                finished[out.request_id] = out
        if len(streamed["b"]) == 3 and "b" not in finished:
            assert full.abort_request("b")
    assert finished["a"].finish_reason == "length"
    assert finished["a"].result is not None and finished["a"].result.token_ids == streamed["a"]
    assert finished["b"].finish_reason == "abort" and len(streamed["b"]) == 3
    assert not full.abort_request("b")


def test_aborted_retroinfer_request_leaves_the_store(
    engine: GenerationEngine, client: KVStoreClient
) -> None:
    link = GrpcStoreLink(client)
    retro = engine.with_config(EngineConfig(), link)
    retro.add_request(GenerationRequest("gone", essay_tokens(engine, 1200), max_new_tokens=40))
    tokens = 0
    while tokens < 2:
        tokens += sum(len(o.new_token_ids) for o in retro.step())
    assert [s.sequence_id.split("-")[0] for s in client.list_sequences()] == ["gone"]
    retro.abort_request("gone")
    (out,) = retro.step()
    assert out.finished and out.finish_reason == "abort"
    assert client.list_sequences() == [] and not retro.has_unfinished_requests()


def test_retroinfer_continuous_batching_at_full_budget_is_full_attention(
    engine: GenerationEngine,
) -> None:
    """RetroInfer with every cluster retrieved, 2 slots, prompts of different lengths joining
    as slots free up: each request's greedy output equals full attention's and its own run
    alone."""
    everything = RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0)
    retro = EngineConfig(retro=everything, max_batch_size=2, prefill_chunk=512)
    shapes = [(1200, 8), (1450, 5), (1150, 7)]
    reqs = [
        GenerationRequest(f"r{i}", essay_tokens(engine, n, seed=20 + i), max_new_tokens=m)
        for i, (n, m) in enumerate(shapes)
    ]
    together = engine.with_config(retro).generate(reqs)
    assert all(r.stats["indexed"] and r.stats["num_clusters"] > 0 for r in together)
    full = [engine.with_config(FULL).generate([r])[0] for r in reqs]
    assert [r.token_ids for r in together] == [r.token_ids for r in full]
    alone = engine.with_config(EngineConfig(retro=everything, max_batch_size=1)).generate(reqs[:1])
    assert alone[0].token_ids == together[0].token_ids


def test_step_options_reach_every_layer(engine: GenerationEngine) -> None:
    """EngineConfig.step_options is what each layer's step runs with: a query transform sees
    every layer once per decode step, and changing the queries changes what is retrieved."""
    seen: list[int] = []

    def zero_queries(layer: int, q: torch.Tensor) -> torch.Tensor:  # q [R, G, D]
        seen.append(layer)
        return torch.zeros_like(q)

    request = GenerationRequest("q", essay_tokens(engine, 1200, seed=5), max_new_tokens=4)
    options = StepOptions(query_transform=zero_queries)
    (changed,) = engine.with_config(EngineConfig(step_options=options)).generate([request])
    layers = engine.loaded.config.num_layers
    assert seen == list(range(layers)) * changed.stats["decode_steps"]
    (plain,) = engine.with_config(EngineConfig()).generate([request])
    assert changed.stats["misses"] != plain.stats["misses"]
