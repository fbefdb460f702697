"""`wavekv serve` for real: Ray Serve on a local loopback Ray, the default model, the KV store on
127.0.0.1, and the official `openai` client (streaming and not, chat, concurrent requests,
cancellation mid-stream, bad requests), plus /health and /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from client import ClientOptions, KVStoreClient
from inference_worker.engine import EngineConfig, GenerationEngine, GenerationRequest
from inference_worker.serve.cli import shutdown, start
from inference_worker.settings import ServeSettings, load
from kvstore_server.embedded import EmbeddedStore

pytestmark = [pytest.mark.slow, pytest.mark.ray]

MODEL = "SmolLM2-135M-Instruct.Q4_1"
NAMESPACE = "serve-test"
# ~1,500 tokens: above the index threshold (1,092), so the prompt is clustered into the store
LONG_PROMPT = "The quick brown fox jumps over the lazy dog near the river bank. " * 110


@pytest.fixture(scope="module")
def served(store_server: EmbeddedStore) -> Iterator[str]:
    """The server on a free port over a real store; its base URL (…/v1)."""
    os.environ.pop("RAY_ADDRESS", None)
    flags = {"port": "0", "store": store_server.target, "namespace": NAMESPACE,
             "max_batch_size": "4", "app_name": "wavekv-test"}  # fmt: skip
    settings = load(ServeSettings, flags)
    try:
        yield start(settings) + "/v1"
    finally:
        shutdown(settings)


@pytest.fixture(scope="module")
def api(served: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=served, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(default_engine: GenerationEngine) -> GenerationEngine:
    """Greedy full attention in this process (short prompts are not indexed: the same output)."""
    return default_engine.with_config(EngineConfig(attention="full", max_batch_size=4))


def greedy(engine: GenerationEngine, prompt: str | list[int], n: int) -> str:
    (result,) = engine.generate([GenerationRequest("ref", prompt, max_new_tokens=n)])
    return result.text


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read().decode()


def test_models_health(api: openai.OpenAI, served: str) -> None:
    assert [m.id for m in api.models.list()] == [MODEL]
    status, body = get(served.removesuffix("/v1") + "/health")
    assert status == 200 and json.loads(body)["model"] == MODEL


def test_completion_matches_the_engine(api: openai.OpenAI, reference: GenerationEngine) -> None:
    out = api.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                 temperature=0)  # fmt: skip
    assert out.choices[0].text == greedy(reference, "The capital of France is", 8)
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 8
    stats = out.model_extra["wavekv"]  # type: ignore[index]
    assert stats["new_tokens"] == 8 and stats["indexed"] is False
    assert "below the index threshold" in stats["not_indexed_reason"]


def test_streamed_completion_adds_up_to_the_whole_one(api: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    whole = api.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(api.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage is not None and last.usage.total_tokens == whole.usage.total_tokens
    assert last.model_extra["wavekv"]["new_tokens"] == 12  # type: ignore[index]


def test_chat_uses_the_models_template(api: openai.OpenAI, reference: GenerationEngine) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,  # type: ignore[arg-type]
                                      temperature=0)  # fmt: skip
    expected = greedy(reference, reference.tokenizer.chat_prompt(messages), 10)
    assert out.choices[0].message.content == expected and out.choices[0].message.role == "assistant"
    stream = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,  # type: ignore[arg-type]
                                         temperature=0, stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_stop_strings_end_the_text(api: openai.OpenAI, reference: GenerationEngine) -> None:
    full = greedy(reference, "Count: 1, 2, 3,", 16)
    stop = full.strip().split(" ")[2]  # a word the model will produce
    out = api.completions.create(model=MODEL, prompt="Count: 1, 2, 3,", max_tokens=16,
                                 temperature=0, stop=[stop])  # fmt: skip
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_concurrent_requests(served: str, reference: GenerationEngine) -> None:
    prompts = ["One, two, three,", "The sky is", "def main():", "Water boils at"]
    expected = [greedy(reference, p, 6) for p in prompts]
    client = openai.AsyncOpenAI(base_url=served, api_key="unused", max_retries=0, timeout=300)

    async def run() -> list[str]:
        outs = await asyncio.gather(*(
            client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0)
            for p in prompts
        ))  # fmt: skip
        return [o.choices[0].text for o in outs]

    assert asyncio.run(run()) == expected


def sequences(store_target: str) -> list[str]:
    with KVStoreClient(store_target, ClientOptions(namespace=NAMESPACE)) as client:
        return [s.sequence_id for s in client.list_sequences()]


def test_cancel_mid_stream_frees_the_store_sequence(
    api: openai.OpenAI, store_server: EmbeddedStore
) -> None:
    # 2,000 tokens take minutes on CPU: a sequence gone within 30 s was aborted, not finished
    stream = api.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=2000,
                                    temperature=0, stream=True)  # fmt: skip
    chunks = iter(stream)
    first = next(chunks)
    held = [s for s in sequences(store_server.target) if s.startswith(first.id + "-")]
    assert len(held) == 1, "the indexed prompt is not in the store while streaming"
    next(chunks)
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 30
    while any(s.startswith(first.id) for s in sequences(store_server.target)):
        assert time.monotonic() < deadline, "the aborted request's sequence is still stored"
        time.sleep(0.2)
    _, text = get(str(api.base_url).removesuffix("/v1/") + "/metrics")
    assert 'wavekv_worker_requests_total{finish_reason="abort"' in text


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "gpt-4"}, openai.NotFoundError, "model"),
        ({"max_tokens": 0}, openai.BadRequestError, "max_tokens"),
        ({"max_tokens": 9000}, openai.BadRequestError, "max_tokens"),
        ({"prompt": "word " * 9000}, openai.BadRequestError, "prompt"),
        ({"n": 2}, openai.BadRequestError, "n"),
        ({"temperature": 3}, openai.BadRequestError, "temperature"),
        ({"logprobs": 3}, openai.BadRequestError, "logprobs"),
        ({"prompt": [1, 99999999]}, openai.BadRequestError, "prompt"),
    ],
)
def test_bad_requests_get_openai_errors(
    api: openai.OpenAI, kwargs: dict[str, object], error: type[openai.APIStatusError], param: str
) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4} | kwargs
    with pytest.raises(error) as err:
        api.completions.create(**body)  # type: ignore[call-overload]
    assert err.value.param == param
    assert err.value.type in ("invalid_request_error", "not_found_error")
    assert param in err.value.message


def test_metrics_show_hit_ratio_and_tokens(api: openai.OpenAI, served: str) -> None:
    out = api.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=8, temperature=0)
    stats = out.model_extra["wavekv"]  # type: ignore[index]
    assert stats["indexed"] is True and stats["hits"] + stats["misses"] > 0
    status, text = get(served.removesuffix("/v1") + "/metrics")
    assert status == 200
    lines = {
        line.split(" ")[0].split("{")[0]: line for line in text.splitlines() if line[:1] != "#"
    }
    for name in ("wavekv_worker_generated_tokens_total", "wavekv_worker_wave_buffer_hit_ratio",
                 "wavekv_worker_time_per_output_token_seconds_bucket",
                 "wavekv_worker_store_fetched_bytes_total",
                 "wavekv_worker_store_call_duration_seconds_bucket",
                 "wavekv_worker_requests_waiting"):  # fmt: skip
        assert name in lines, name
    tokens = float(lines["wavekv_worker_generated_tokens_total"].rsplit(" ", 1)[1])
    assert tokens >= 8
