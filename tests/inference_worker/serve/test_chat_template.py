"""The model's chat template (from its GGUF metadata) renders what Hugging Face's
apply_chat_template renders for the same model."""

from __future__ import annotations

import random

import pytest

from inference_worker.serve.chat_template import ChatTemplate, ChatTemplateError

pytestmark = pytest.mark.slow  # the default model's tokenizer

WORDS = [
    "pass",
    "key",
    "remember",
    "the",
    "number",
    "Paris",
    "hello",
    "world",
    "42",
    "ünï",
    "🙂",
    "{{",
    "raw",
    "}}",
    "<b>",
]


@pytest.fixture(scope="module")
def tokenizer(default_engine):  # type: ignore[no-untyped-def]
    return default_engine.tokenizer


def conversation(rng: random.Random) -> list[dict[str, str]]:
    roles = (["system"] if rng.random() < 0.5 else []) + ["user", "assistant"] * rng.randint(0, 2)
    messages = [
        {"role": r, "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))} for r in roles
    ]
    return [*messages, {"role": "user", "content": " ".join(rng.choices(WORDS, k=5))}]


def test_template_is_in_the_gguf_metadata(tokenizer) -> None:  # type: ignore[no-untyped-def]
    source = tokenizer.chat_template
    assert source is not None and "<|im_start|>" in source


@pytest.mark.parametrize("seed", range(5))
def test_rendering_matches_transformers(tokenizer, seed: int) -> None:  # type: ignore[no-untyped-def]
    source = tokenizer.chat_template
    assert source is not None
    template = ChatTemplate(source, tokenizer.hf.bos_token, tokenizer.hf.eos_token)
    messages = conversation(random.Random(seed))
    ids = tokenizer.encode(template.render(messages), add_special_tokens=False)
    assert ids == tokenizer.chat_prompt(messages)
    assert template.render(messages).endswith("<|im_start|>assistant\n")


def test_raise_exception_in_a_template_is_a_chat_template_error() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="user first"):
        template.render([{"role": "assistant", "content": "x"}])
    broken = ChatTemplate("{{ messages[0].content | no_such_filter }}")
    with pytest.raises(ChatTemplateError, match="refused"):
        broken.render([{"role": "user", "content": "x"}])
