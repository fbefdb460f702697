"""EngineLoop over the real default engine: concurrent requests from asyncio get exactly what
`engine.generate` gives, refusals surface before the first token, leaving early aborts."""

from __future__ import annotations

import asyncio

import pytest

from inference_worker.engine import EngineConfig, GenerationEngine, GenerationRequest
from inference_worker.metrics import WorkerMetrics
from inference_worker.serve.engine_loop import EngineLoop, EngineStopped

pytestmark = pytest.mark.slow  # the real default model

PROMPTS = ["The capital of France is", "One, two, three,", "def add(a, b):", "Roses are red,"]


@pytest.fixture
def engine(default_engine: GenerationEngine) -> GenerationEngine:
    return default_engine.with_config(EngineConfig(attention="full", max_batch_size=4))


async def collect(loop: EngineLoop, request: GenerationRequest) -> list[int]:
    tokens: list[int] = []
    async for out in await loop.generate(request):
        tokens.extend(out.new_token_ids)
    return tokens


def test_concurrent_requests_match_generate(engine: GenerationEngine) -> None:
    requests = [GenerationRequest(f"r{i}", p, max_new_tokens=6) for i, p in enumerate(PROMPTS)]
    metrics = WorkerMetrics("test")
    loop = EngineLoop(engine, metrics)

    async def run_all() -> list[list[int]]:
        return await asyncio.gather(*(collect(loop, r) for r in requests))

    try:
        got = asyncio.run(run_all())
    finally:
        loop.close()
    reference = engine.with_config(engine.config).generate(requests)
    assert got == [r.token_ids for r in reference]
    total = metrics.generated_tokens.labels("test")._value.get()
    assert total == sum(len(t) for t in got)
    finished = sum(
        metrics.requests.labels("test", reason)._value.get() for reason in ("stop", "length")
    )
    assert finished == len(requests)


def test_refused_request_raises_before_streaming(engine: GenerationEngine) -> None:
    loop = EngineLoop(engine)
    too_long = GenerationRequest("long", [1] * 10, max_new_tokens=engine.max_model_len)

    async def submit() -> None:
        await loop.generate(too_long)

    try:
        with pytest.raises(ValueError, match="exceed the context"):
            asyncio.run(submit())
    finally:
        loop.close()


def test_leaving_early_aborts_the_request(engine: GenerationEngine) -> None:
    loop = EngineLoop(engine)

    async def leave_after_two() -> list[int]:
        outputs = await loop.generate(GenerationRequest("quit", PROMPTS[0], max_new_tokens=200))
        tokens: list[int] = []
        async for out in outputs:
            tokens.extend(out.new_token_ids)
            if len(tokens) == 2:
                break
        await outputs.aclose()  # type: ignore[attr-defined]
        # commands run in order: once this one finishes, the abort has been applied
        return await collect(loop, GenerationRequest("next", PROMPTS[1], max_new_tokens=3))

    try:
        assert len(asyncio.run(leave_after_two())) == 3
        assert loop.engine.scheduler.find("quit") is None
        assert not loop.engine.has_unfinished_requests()
    finally:
        loop.close()


def test_closing_the_loop_ends_requests_in_flight(engine: GenerationEngine) -> None:
    loop = EngineLoop(engine)

    async def run() -> None:
        outputs = await loop.generate(GenerationRequest("a", PROMPTS[0], max_new_tokens=500))
        async for out in outputs:
            if out.new_token_ids:
                await asyncio.to_thread(loop.close)

    with pytest.raises(EngineStopped):
        asyncio.run(run())
    assert not loop.running()
