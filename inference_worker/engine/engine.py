"""GenerationEngine: requests in, tokens out, one scheduler step at a time.

The API follows vLLM's LLMEngine: `add_request`, `step()` (each running request advanced by at
most one token; a chunk of the oldest admitted prompt prefilled before the decode step),
`abort_request`, and `generate` for a list of requests. Attention (full or RetroInfer), the
method's options and the batch limits are fixed at construction (`EngineConfig`); RetroInfer
keeps the clustered KV in a store (in-process, or kvstore_server through a `StoreLink`).
The engine is not thread-safe: drive it from one thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as Seq
from pathlib import Path

import torch

from client import NotFoundError, UnavailableError
from inference_worker.engine.config import EngineConfig
from inference_worker.engine.full_runner import FullAttentionRunner
from inference_worker.engine.retro_runner import RetroSlotRunner
from inference_worker.engine.sampler import SamplingBatch, sample
from inference_worker.engine.scheduler import Scheduler
from inference_worker.engine.sequence import RequestOutput, Sequence, Status
from inference_worker.engine.store_link import InProcessStoreLink, StoreLink
from inference_worker.engine.store_link import StoreRestartedError as LinkRestartedError
from inference_worker.engine.types import GenerationRequest, GenerationResult
from inference_worker.model import LoadedModel, load_model

log = logging.getLogger(__name__)
MAX_STORE_RECOVERIES = 2  # store losses one request survives
# the store lost the request's sequences: recovered by prefilling them again
STORE_LOST = (UnavailableError, NotFoundError, LinkRestartedError)


class GenerationEngine:
    """One model, one attention configuration, a waiting queue and batch slots."""

    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig | None = None,
        store: StoreLink | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.config = config or EngineConfig()
        self.store = store if store is not None else InProcessStoreLink()
        cfg = self.config
        self.scheduler = Scheduler(cfg.max_batch_size)
        self.runner = self._runner(loaded, cfg)
        self._eos = frozenset(self.tokenizer.eos_token_ids)
        self._aborted: list[Sequence] = []  # waiting requests aborted since the last step

    def _runner(
        self, loaded: LoadedModel, cfg: EngineConfig
    ) -> FullAttentionRunner | RetroSlotRunner:
        if cfg.attention == "full":
            return FullAttentionRunner(loaded, cfg.max_batch_size, cfg.cuda_graphs)
        return RetroSlotRunner(loaded, cfg.retro, self.store, cfg.max_batch_size,
                               cfg.cuda_graphs, cfg.step_options)  # fmt: skip

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        device: str | torch.device | None = None,
        config: EngineConfig | None = None,
        store: StoreLink | None = None,
    ) -> GenerationEngine:
        """model None -> the default model; device None -> cuda if present."""
        return cls(load_model(model, device), config, store)

    def with_config(self, config: EngineConfig, store: StoreLink | None = None) -> GenerationEngine:
        """Another engine over the same loaded weights (no copy), e.g. the other attention."""
        return GenerationEngine(self.loaded, config, store)

    @property
    def model_name(self) -> str:
        return self.loaded.path.name

    @property
    def max_model_len(self) -> int:
        limit = self.loaded.config.max_position_embeddings
        return min(limit, self.config.max_model_len or limit)

    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request (its prompt tokenized now). Raises ValueError for a request that
        cannot run (too long, duplicate id of an unfinished request)."""
        if self.scheduler.find(request.id) is not None:
            raise ValueError(f"request id {request.id!r} is already in the engine")
        prompt = (
            self.tokenizer.encode(request.prompt)
            if isinstance(request.prompt, str)
            else [int(t) for t in request.prompt]
        )
        if len(prompt) + request.max_new_tokens > self.max_model_len:
            raise ValueError(
                f"request {request.id!r}: {len(prompt)} prompt tokens + max_new_tokens="
                f"{request.max_new_tokens} exceed the context of {self.max_model_len} tokens"
            )
        self.scheduler.add(Sequence.of(request, prompt))

    @torch.inference_mode()
    def abort_request(self, request_id: str) -> bool:
        """Stop a request; its store sequence is released and the next step reports it
        finished with reason "abort". False if no unfinished request has that id."""
        seq = self.scheduler.find(request_id)
        if seq is None:
            return False
        if seq.status is Status.WAITING:
            self.scheduler.remove_waiting(seq)
            seq.finish("abort")
        else:
            seq.finish("abort")
            self._retire(seq)
        self._aborted.append(seq)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work() or bool(self._aborted)

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Admit, prefill one chunk, decode one token per running request (a request whose
        prompt completed in this step included), retire the finished. On an error every
        request holding a slot is released and failed (the exception propagates); waiting
        requests stay queued."""
        outputs = [self._finished_output(s) for s in self._aborted]
        self._aborted = []
        new: dict[str, list[int]] = {}
        try:
            schedule = self.scheduler.schedule()
            if schedule.admitted:
                self.runner.admit(schedule.admitted)
            self._note(self._prefill(schedule.prefill), new, outputs)
            running = [s for s in self.scheduler.active() if s.status is Status.RUNNING]
            self._note(self._decode(running), new, outputs)
        except STORE_LOST as error:
            self._recover(error)  # prefilled again and replayed, or failed and raised
        except Exception as error:
            self._fail_active(error)
            raise
        done = {o.request_id for o in outputs}
        for seq in self.scheduler.active():
            if seq.id in new and seq.id not in done:
                outputs.append(RequestOutput(seq.id, new[seq.id], False))
        return outputs

    def _note(
        self,
        stepped: list[tuple[Sequence, int | None]],
        new: dict[str, list[int]],
        outputs: list[RequestOutput],
    ) -> None:
        """Record each sequence's new token; retire the finished ones (reported at once)."""
        for seq, token in stepped:
            got = new.setdefault(seq.id, [])
            if token is not None:
                got.append(token)
            if seq.status is Status.FINISHED:
                self._retire(seq)
                outputs.append(self._finished_output(seq, new[seq.id]))

    def generate(self, requests: Seq[GenerationRequest]) -> list[GenerationResult]:
        """Complete every request (batched as the scheduler allows); results in request
        order. Other requests already in the engine run along. A request that fails raises its
        error (the others of this call are aborted)."""
        for request in requests:
            self.add_request(request)
        wanted = {r.id for r in requests}
        results: dict[str, GenerationResult] = {}
        while len(results) < len(wanted):
            for out in self.step():
                if not (out.finished and out.request_id in wanted and out.result is not None):
                    continue
                if out.error is not None:
                    for other in wanted - results.keys() - {out.request_id}:
                        self.abort_request(other)
                    raise out.error
                results[out.request_id] = out.result
        return [results[r.id] for r in requests]

    def forced_decode(self, prompt: Seq[int], forced: Seq[int]) -> list[int]:
        """Teacher forcing: after `prompt`, feed `forced` one token at a time. Returns the greedy
        prediction made before each forced token (len(forced) ids): the k-th prediction is
        what the model would emit after prompt + forced[:k]. Runs with the engine's other
        requests, as one more request."""
        if not prompt or not forced:
            raise ValueError(f"prompt ({len(prompt)}) and forced ({len(forced)}) must be non-empty")
        request = GenerationRequest(
            f"forced-{time.monotonic_ns()}", [int(t) for t in prompt], len(forced)
        )
        self.add_request(request)
        seq = self.scheduler.find(request.id)
        assert seq is not None
        seq.forced = [int(t) for t in forced]
        while seq.status is not Status.FINISHED:
            self.step()
        if seq.finish_reason != "length":
            raise RuntimeError(f"forced decode ended early: {seq.stats.get('error', 'aborted')}")
        return seq.predictions

    def _prefill(self, seqs: list[Sequence]) -> list[tuple[Sequence, int | None]]:
        """One chunk of each sequence's prompt; the first token of every completed prompt."""
        if not seqs:
            return []
        t0 = _now()
        logits = self.runner.prefill(seqs, self.config.prefill_chunk)  # [n, V]
        spent = (_now() - t0) / len(seqs)
        for seq in seqs:
            seq.prefill_s += spent
        done = [i for i, s in enumerate(seqs) if s.prefilled == len(s.prompt)]
        if not done:
            return []
        ready = [seqs[i] for i in done]
        for seq in ready:
            seq.status = Status.RUNNING
        return self._sample(logits[done], ready)

    def _decode(self, seqs: list[Sequence]) -> list[tuple[Sequence, int | None]]:
        if not seqs:
            return []
        for seq in seqs:
            seq.max_batch = max(seq.max_batch, len(seqs))
        return self._sample(self.runner.decode(seqs), seqs)

    def _sample(
        self, logits: torch.Tensor, seqs: list[Sequence]
    ) -> list[tuple[Sequence, int | None]]:
        """Next token of each sequence (logits [n, V]); one host sync for the batch. None for
        a sequence that replays a token it generated before a store loss."""
        reqs = [s.request for s in seqs]
        params = SamplingBatch.of(
            [r.temperature for r in reqs], [r.top_p for r in reqs], [s.seed for s in seqs],
            [len(s.out) for s in seqs], logits.device,
        )  # fmt: skip
        tokens = sample(logits, params).tolist()
        fresh = [seq.append(token, self._eos) for seq, token in zip(seqs, tokens, strict=True)]
        return [(s, t if f else None) for s, t, f in zip(seqs, tokens, fresh, strict=True)]

    def _retire(self, seq: Sequence) -> None:
        """A finished sequence leaves its slot (its statistics taken first)."""
        seq.stats = self.runner.stats(seq)
        self.runner.release(seq)
        self.scheduler.free(seq)

    def _finished_output(self, seq: Sequence, new: list[int] | None = None) -> RequestOutput:
        stats = {"attention": self.config.attention, **seq.timing(), **seq.stats}
        text = self.tokenizer.decode(seq.out)
        result = GenerationResult(seq.id, text, list(seq.out), stats)
        return RequestOutput(seq.id, new or [], True, seq.finish_reason, result, seq.error)

    def _recover(self, error: Exception) -> None:
        """The store lost the sequences (it restarted, or went away and came back): every
        request holding a slot is prefilled again from its prompt and replays the tokens it
        generated, which rebuilds its state as it was (greedy output unchanged). A request
        that was already recovered MAX_STORE_RECOVERIES times fails; if the store cannot be
        reached again, every request holding a slot fails and the error propagates."""
        log.warning("KV store lost (%s: %s); prefilling the running requests again",
                    type(error).__name__, error)  # fmt: skip
        try:
            self.store.reconnect()
        except Exception as again:  # still unreachable: the store's loss is the error
            self._fail_active(error)
            raise error from again
        restarted = []
        for seq in self.scheduler.active():
            self.runner.release(seq)
            if seq.recoveries >= MAX_STORE_RECOVERIES:
                self._fail_one(seq, error)
            else:
                seq.restart()
                restarted.append(seq)
        if restarted:
            self.runner.admit(restarted)

    def _fail_one(self, seq: Sequence, error: Exception) -> None:
        seq.finish("abort")
        seq.error = error
        seq.stats = {"error": f"{type(error).__name__}: {error}"}
        self.scheduler.free(seq)
        self._aborted.append(seq)

    def _fail_active(self, error: Exception) -> None:
        """After an error mid-step: every slot's request is released and finished with
        "abort" and the error in its stats (the next step reports them)."""
        for seq in self.scheduler.active():
            seq.finish("abort")
            seq.error = error
            seq.stats = {"error": f"{type(error).__name__}: {error}"}
            try:
                self.runner.release(seq)
            except Exception:  # releasing never masks the error being raised
                log.exception("releasing request %r after a failed step", seq.id)
            self.scheduler.free(seq)
            self._aborted.append(seq)


def _now() -> float:
    return time.perf_counter()
