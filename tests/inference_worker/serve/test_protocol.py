"""Request validation of the OpenAI bodies: what is refused, with which field and status."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inference_worker.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    chunk_body,
    completion_body,
)


def test_a_single_prompt_in_any_openai_shape() -> None:
    for prompt, expected in [("hi", "hi"), ([1, 2], [1, 2]), (["hi"], "hi"), ([[3, 4]], [3, 4])]:
        assert CompletionRequest(model="m", prompt=prompt).single_prompt() == expected


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"prompt": ["a", "b"]}, "prompt", "one prompt per request, got 2"),
        ({"prompt": ""}, "prompt", "prompt is empty"),
        ({"prompt": "x", "echo": True}, "echo", "echo is not supported"),
        ({"prompt": "x", "logprobs": 2}, "logprobs", "logprobs is not supported"),
        ({"prompt": "x", "tools": [{"type": "function"}]}, "tools", "tools is not supported"),
    ],
)
def test_unsupported_or_batched_prompts_are_400s(
    fields: dict[str, object], param: str, message: str
) -> None:
    with pytest.raises(ApiError) as err:
        CompletionRequest(model="m", **fields).single_prompt()  # type: ignore[arg-type]
    assert (err.value.status, err.value.param) == (400, param)
    assert message in err.value.message
    assert err.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 0},
        {"temperature": 2.5},
        {"top_p": 0},
        {"n": 2},
        {"presence_penalty": 0.5},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [""]},
    ],
)
def test_out_of_range_fields_fail_validation(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as err:
        CompletionRequest(model="m", prompt="x", **fields)  # type: ignore[arg-type]
    assert err.value.errors()[0]["loc"][0] == next(iter(fields))


def test_chat_messages_and_limits() -> None:
    body = ChatCompletionRequest(
        model="m",
        messages=[
            {"role": "developer", "content": "be brief"},  # type: ignore[list-item]
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },  # type: ignore[list-item]
        ],
        max_tokens=9,
        max_completion_tokens=5,
    )
    assert body.conversation() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert body.limit() == ("max_completion_tokens", 5)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[])
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item]


def test_bodies_have_the_openai_shape() -> None:
    whole = completion_body("id1", "m", "hi", "stop", {"usage": {}}, chat=True)
    assert (
        whole["object"] == "chat.completion" and whole["choices"][0]["message"]["content"] == "hi"
    )
    first = chunk_body("id1", "m", "", None, chat=True, first=True)
    assert first["choices"][0]["delta"] == {"content": "", "role": "assistant"}
    last = chunk_body("id1", "m", None, "length", chat=False, extra={"usage": {"total_tokens": 3}})
    assert last["object"] == "text_completion" and last["choices"][0]["text"] == ""
    assert last["usage"] == {"total_tokens": 3}
