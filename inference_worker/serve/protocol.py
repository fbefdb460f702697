"""The OpenAI API subset `wavekv serve` speaks: request validation, response and chunk bodies,
and OpenAI-style errors.

Requests are pydantic models; every field that the server does not implement is refused with a
400 naming the field (never silently ignored), so a client learns at once what it cannot use.
Fields the OpenAI API has that do not change the output here (`user`, `stream_options`) are
accepted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4  # as in the OpenAI API


class ApiError(Exception):
    """An OpenAI-style error: HTTP status, message, the offending parameter and a code."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class StreamOptions(BaseModel):
    include_usage: bool = False  # usage is always sent with the last chunk here


class SamplingFields(BaseModel):
    """What /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="allow")  # unknown fields are refused in `unsupported`

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0)  # not implemented: 0 only
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> None:
        """Refuse fields of the OpenAI API this server does not implement."""
        for name in sorted(self.model_extra or {}):
            value = (self.model_extra or {})[name]
            if value not in (None, False, [], {}):
                raise ApiError(400, f"{name} is not supported by this server", param=name)


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = Field(default=None, ge=1, le=1)
    suffix: str | None = None

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request (a batch of prompts is refused)."""
        self.unsupported()
        for name in ("echo", "logprobs", "suffix"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server", param=name)
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise ApiError(400, f"one prompt per request, got {len(prompt)}", "prompt")
            prompt = prompt[0]  # type: ignore[assignment]
        if not prompt:
            raise ApiError(400, "prompt is empty", "prompt")
        return prompt  # type: ignore[return-value]


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False

    def conversation(self) -> list[dict[str, str]]:
        self.unsupported()
        if self.logprobs:
            raise ApiError(400, "logprobs is not supported by this server", param="logprobs")
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]

    def limit(self) -> tuple[str, int | None]:
        """The generation limit and the field that set it."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


def request_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    rid: str, model: str, text: str, finish: str | None, extra: dict[str, Any], chat: bool
) -> dict[str, Any]:
    """A whole (non-streamed) response; `extra` adds `usage` and `wavekv`."""
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    kind = "chat.completion" if chat else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "choices": [choice], **extra}  # fmt: skip


def chunk_body(
    rid: str,
    model: str,
    delta: str | None,
    finish: str | None,
    chat: bool,
    first: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed chunk; the last one carries `finish_reason`, `usage` and `wavekv`."""
    if chat:
        part: dict[str, Any] = {} if delta is None else {"content": delta}
        if first:
            part["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": part, "logprobs": None,
                                  "finish_reason": finish}  # fmt: skip
    else:
        choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "choices": [choice], **(extra or {})}  # fmt: skip
