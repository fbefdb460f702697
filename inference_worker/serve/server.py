"""What one replica of `wavekv serve` does with an OpenAI request: check it, turn it into an
engine request, and answer it whole or as server-sent events.

Each response carries `usage` and a `wavekv` field with the engine's per-request statistics
(attention, timing, RetroInfer counters: hits, misses, hit_ratio, bytes from the store, whether
the prompt was indexed). Errors follow the OpenAI format (inference_worker.serve.protocol).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inference_worker.serve.chat_template import ChatTemplate, ChatTemplateError
from inference_worker.serve.engine_loop import EngineLoop
from inference_worker.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    chunk_body,
    completion_body,
    request_id,
    usage,
)
from inference_worker.serve.text import TextStream

if TYPE_CHECKING:
    from inference_worker.engine import GenerationRequest, GenerationResult, RequestOutput
    from inference_worker.model import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What the server says about its model and what it accepts."""

    name: str  # the `model` clients must name
    max_model_len: int  # prompt + generated tokens
    vocab_size: int
    default_max_tokens: int  # when a request sets none (capped by the context left)


@dataclass(slots=True)
class Prepared:
    """A checked request, ready for the engine."""

    rid: str
    prompt_ids: list[int]
    max_tokens: int
    body: SamplingFields
    chat: bool


class ServerCore:
    """Turns API requests into engine requests on one EngineLoop."""

    def __init__(
        self,
        loop: EngineLoop,
        tokenizer: Tokenizer,
        card: ModelCard,
        chat_template: ChatTemplate | None,
    ) -> None:
        self.loop, self.tokenizer, self.card, self.template = loop, tokenizer, card, chat_template

    def models(self) -> dict[str, Any]:
        model = {"id": self.card.name, "object": "model", "created": 0, "owned_by": "wavekv",
                 "max_model_len": self.card.max_model_len}  # fmt: skip
        return {"object": "list", "data": [model]}

    def prepare_completion(self, body: CompletionRequest) -> Prepared:
        self._check_model(body.model)
        prompt = body.single_prompt()
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            bad = [t for t in prompt if not 0 <= t < self.card.vocab_size]
            if bad:
                raise ApiError(400, f"prompt token ids out of [0, {self.card.vocab_size}): "
                               f"{bad[:5]}", "prompt")  # fmt: skip
            ids = list(prompt)
        limit = ("max_tokens", body.max_tokens)
        return self._prepared("cmpl", ids, limit, body, chat=False, param="prompt")

    def prepare_chat(self, body: ChatCompletionRequest) -> Prepared:
        self._check_model(body.model)
        messages = body.conversation()
        if self.template is None:
            raise ApiError(400, f"model {self.card.name!r} has no chat template; use "
                           "/v1/completions", "messages")  # fmt: skip
        try:
            text = self.template.render(messages)
        except ChatTemplateError as err:
            raise ApiError(400, str(err), "messages") from None
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self._prepared("chatcmpl", ids, body.limit(), body, chat=True, param="messages")

    def _check_model(self, model: str) -> None:
        if model != self.card.name:
            raise ApiError(404, f"The model `{model}` does not exist; this server serves "
                           f"`{self.card.name}`", "model", "model_not_found")  # fmt: skip

    def _prepared(
        self, kind: str, ids: list[int], limit: tuple[str, int | None], body: SamplingFields,
        chat: bool, param: str,
    ) -> Prepared:  # fmt: skip
        """Check the prompt and the token limit (named by the field that set it) against the
        model's context."""
        room = self.card.max_model_len - len(ids)
        if room < 1:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this model's context is "
                           f"{self.card.max_model_len} tokens", param,
                           "context_length_exceeded")  # fmt: skip
        name, value = limit
        if value is not None and value > room:
            raise ApiError(400, f"{name}={value} is too large: the prompt has {len(ids)} tokens "
                           f"and this model's context is {self.card.max_model_len} tokens "
                           f"(at most {room})", name, "context_length_exceeded")  # fmt: skip
        max_tokens = value if value is not None else min(self.card.default_max_tokens, room)
        return Prepared(request_id(kind), ids, max_tokens, body, chat)

    def engine_request(self, p: Prepared) -> GenerationRequest:
        from inference_worker.engine import GenerationRequest

        body = p.body
        return GenerationRequest(p.rid, p.prompt_ids, p.max_tokens, body.temperature,
                                 body.top_p, body.seed)  # fmt: skip

    async def start(self, p: Prepared) -> AsyncIterator[RequestOutput]:
        try:
            return await self.loop.generate(self.engine_request(p))
        except ValueError as err:  # the engine refused it (e.g. too long)
            raise ApiError(400, str(err), "prompt") from None

    async def respond(self, p: Prepared) -> dict[str, Any]:
        """The whole response body."""
        text = TextStream(self.tokenizer.decode, p.body.stop_list())
        async for _, result, reason in self._run(p, text):
            if result is not None:
                extra = self._extra(p, result, text)
                return completion_body(p.rid, self.card.name, text.text, reason, extra, p.chat)
        raise AssertionError("the engine ended the request without a final output")

    async def stream(self, p: Prepared) -> AsyncIterator[str]:
        """Server-sent events: `data: {chunk}` lines, then `data: [DONE]`. Raises ApiError
        before the first event (then the caller answers with a plain error)."""
        text = TextStream(self.tokenizer.decode, p.body.stop_list())
        events = self._run(p, text)
        first = await anext(events)  # errors before any event become plain HTTP errors
        return self._sse(p, text, first, events)

    async def _sse(
        self,
        p: Prepared,
        text: TextStream,
        first: tuple[str, GenerationResult | None, str | None],
        events: AsyncIterator[tuple[str, GenerationResult | None, str | None]],
    ) -> AsyncIterator[str]:
        name = self.card.name
        if p.chat:
            yield _sse(chunk_body(p.rid, name, "", None, True, first=True))
        try:
            async for delta, result, reason in _chain(first, events):
                if result is None:
                    yield _sse(chunk_body(p.rid, name, delta, None, p.chat))
                else:
                    extra = self._extra(p, result, text)
                    tail = delta or None
                    yield _sse(chunk_body(p.rid, name, tail, reason, p.chat, extra=extra))
        except ApiError as err:
            yield _sse(err.body())
        yield "data: [DONE]\n\n"

    async def _run(
        self, p: Prepared, text: TextStream
    ) -> AsyncIterator[tuple[str, GenerationResult | None, str | None]]:
        """(delta, None, None) as text becomes visible; last (tail, result, finish_reason).
        A stop string aborts the request in the engine (freeing its slot and store sequence)
        and ends it with finish_reason "stop"."""
        try:
            outputs = await self.loop.generate(self.engine_request(p))
        except ValueError as err:  # the engine refused it (e.g. too long)
            raise ApiError(400, str(err), "prompt") from None
        async for out in outputs:
            if out.new_token_ids and not text.stopped:
                delta = text.add(out.new_token_ids)
                if text.stopped:
                    self.loop.abort(p.rid)
                if delta:
                    yield delta, None, None
            if out.finished:
                result = out.result
                if result is None or ("error" in result.stats and not text.stopped):
                    error = result.stats.get("error") if result else "no result"
                    raise ApiError(500, f"generation failed: {error}", kind="server_error")
                tail = text.flush()
                reason = "stop" if text.stopped else out.finish_reason
                yield tail, result, reason

    def _extra(self, p: Prepared, result: GenerationResult, text: TextStream) -> dict[str, Any]:
        completion = len(text.tokens) if text.stopped else len(result.token_ids)
        return {"usage": usage(len(p.prompt_ids), completion), "wavekv": result.stats}


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"
