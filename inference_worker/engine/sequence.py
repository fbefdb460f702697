"""One request's life in the engine (waiting -> prefilling -> running -> finished), and what a
step reports about it."""

from __future__ import annotations

import enum
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from inference_worker.engine.types import GenerationRequest, GenerationResult

FinishReason = Literal["stop", "length", "abort"]


class Status(enum.Enum):
    WAITING = "waiting"  # queued, no batch slot yet
    PREFILLING = "prefilling"  # holds a slot; prompt chunks being prefilled
    RUNNING = "running"  # prompt done; one token per decode step
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    """A request plus everything the engine tracks about it."""

    request: GenerationRequest
    prompt: list[int]  # token ids
    store_id: str  # the store's sequence id (unique per run of the request)
    seed: int  # sampling seed (the request's, or drawn at arrival)
    status: Status = Status.WAITING
    slot: int | None = None  # batch slot while PREFILLING / RUNNING
    prefilled: int = 0  # prompt tokens prefilled so far
    out: list[int] = field(default_factory=list)  # generated token ids
    finish_reason: FinishReason | None = None
    arrival: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    finished_at: float | None = None
    prefill_s: float = 0.0  # time in this sequence's prefill forwards
    stats: dict[str, Any] = field(default_factory=dict)  # attention statistics (backend's)
    # teacher forcing: the k-th generated token is forced[k]; what the model picked instead
    # is kept in `predictions` (GenerationEngine.forced_decode)
    forced: list[int] | None = None
    predictions: list[int] = field(default_factory=list)
    # after a store loss: the tokens generated before it, fed again (not reported again) after
    # the prompt is prefilled anew, so that the sequence's state is rebuilt as it was
    replay: list[int] = field(default_factory=list)
    recoveries: int = 0  # store losses this request survived
    max_batch: int = 0  # the most requests decoded together with this one in a step
    error: BaseException | None = None  # what failed the request (finished "abort")

    @classmethod
    def of(cls, request: GenerationRequest, prompt: list[int]) -> Sequence:
        seed = request.seed if request.seed is not None else random.getrandbits(63)
        return cls(request, prompt, f"{request.id}-{uuid.uuid4().hex[:12]}", seed)

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def position(self) -> int:
        """Position of the last generated token, which the next decode step feeds (the
        tokens before it are cached)."""
        assert self.out, "no token generated yet"
        return len(self.prompt) + len(self.out) - 1

    @property
    def max_length(self) -> int:
        return len(self.prompt) + self.request.max_new_tokens

    def append(self, token: int, eos: frozenset[int]) -> bool:
        """Record a generated token; finish on a stop token or at max_new_tokens. While a
        replay is pending its next token is recorded instead; returns whether the token is
        new (not a replayed one)."""
        if len(self.out) < len(self.replay):
            self.out.append(self.replay[len(self.out)])
            return False
        if self.first_token is None:
            self.first_token = time.perf_counter()
        if self.forced is not None:
            self.predictions.append(token)
            self.out.append(self.forced[len(self.out)])
            if len(self.out) == len(self.forced):
                self.finish("length")
            return True
        self.out.append(token)
        stops = eos | frozenset(self.request.stop_token_ids or ())
        if token in stops:
            self.finish("stop")
        elif len(self.out) >= self.request.max_new_tokens:
            self.finish("length")
        return True

    def restart(self) -> None:
        """Prefill again from the prompt, then replay what was generated (a store loss)."""
        self.replay, self.out = list(self.out), []
        self.prefilled, self.recoveries = 0, self.recoveries + 1
        self.status = Status.PREFILLING

    def finish(self, reason: FinishReason) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.finished_at = time.perf_counter()

    def timing(self) -> dict[str, Any]:
        """The request's timing statistics (seconds; tokens/s over its decode steps)."""
        end = self.finished_at or time.perf_counter()
        first = self.first_token or end
        decode_s = end - first
        decoded = max(len(self.out) - 1, 0)  # the first token comes from the prefill
        return {
            "prompt_tokens": len(self.prompt),
            "new_tokens": len(self.out),
            "decode_steps": decoded,
            "finish_reason": self.finish_reason,
            "time_to_first_token_s": first - self.arrival,
            "prefill_s": self.prefill_s,
            "decode_s": decode_s,
            "decode_tokens_per_s": decoded / decode_s if decode_s > 0 else 0.0,
            "store_recoveries": self.recoveries,
            "batch_size": self.max_batch,
        }


@dataclass(slots=True)
class RequestOutput:
    """What one engine step did for one request."""

    request_id: str
    new_token_ids: list[int]  # tokens generated by this step (0 or 1)
    finished: bool
    finish_reason: FinishReason | None = None
    result: GenerationResult | None = None  # the whole completion once finished
    error: BaseException | None = None  # why an aborted request failed (None: asked to stop)
