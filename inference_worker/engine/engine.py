"""GenerationEngine: batched prefill + decode of a Llama-family model with full or RetroInfer
attention; RetroInfer keeps the clustered KV in a store (in-process or kvstore_server)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from client import SequenceGeometry
from inference_worker.engine.retro_backend import RetroInferBackend
from inference_worker.engine.sampling import make_generator, sample_next
from inference_worker.engine.store_link import TORCH_TO_STORE_DTYPE, InProcessStoreLink, StoreLink
from inference_worker.engine.types import GenerationRequest, GenerationResult
from inference_worker.model import AttentionBackend, AttentionMetadata, LoadedModel, load_model
from inference_worker.retroinfer import RetroInferConfig

log = logging.getLogger(__name__)

Attention = Literal["retroinfer", "full"]


@dataclass(slots=True)
class EngineConfig:
    """Scheduling knobs of the engine (the method's knobs live in RetroInferConfig)."""

    max_batch_size: int = 8  # sequences decoded together (same prompt length)
    prefill_chunk: int = 1024  # prompt tokens per prefill forward call

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")


@dataclass(slots=True)
class _Row:
    """One request inside a batch group."""

    request: GenerationRequest
    prompt: list[int]
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    done: bool = False


class GenerationEngine:
    """Holds one model; `generate` runs requests in groups of equal prompt length."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.config = config or EngineConfig()

    @classmethod
    def load(
        cls,
        model_path: str | Path | None = None,
        device: str | torch.device | None = None,
        config: EngineConfig | None = None,
    ) -> GenerationEngine:
        """model_path None -> the default SmolLM2 GGUF; device None -> cuda if present."""
        return cls(load_model(model_path, device), config)

    @property
    def model_name(self) -> str:
        return self.loaded.path.name

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        attention: Attention = "retroinfer",
        retro_config: RetroInferConfig | None = None,
        store: StoreLink | None = None,
    ) -> list[GenerationResult]:
        """Complete every request; results in request order. `store` None with retroinfer keeps
        the clustered KV in this process."""
        if attention not in ("retroinfer", "full"):
            raise ValueError(f"attention must be 'retroinfer' or 'full', got {attention!r}")
        rows = [self._row(r) for r in requests]
        link = store if store is not None else InProcessStoreLink()
        results: dict[str, GenerationResult] = {}
        for group in self._groups(rows):
            for row, stats in zip(
                group,
                self._run_group(group, attention, retro_config or RetroInferConfig(), link),
                strict=True,
            ):
                text = self.tokenizer.decode(row.out)
                results[row.request.id] = GenerationResult(row.request.id, text, row.out, stats)
        return [results[r.id] for r in requests]

    def _row(self, request: GenerationRequest) -> _Row:
        prompt = (
            self.tokenizer.encode(request.prompt)
            if isinstance(request.prompt, str)
            else [int(t) for t in request.prompt]
        )
        limit = self.loaded.config.max_position_embeddings
        if len(prompt) + request.max_new_tokens > limit:
            raise ValueError(
                f"request {request.id!r}: {len(prompt)} prompt tokens + "
                f"max_new_tokens={request.max_new_tokens} exceed the model's "
                f"context of {limit}"
            )
        return _Row(request, prompt, make_generator(request.seed, self.device))

    def _groups(self, rows: list[_Row]) -> list[list[_Row]]:
        """Rows of equal prompt length, at most max_batch_size per group, in first-seen order."""
        by_len: dict[int, list[list[_Row]]] = {}
        order: list[list[_Row]] = []
        for row in rows:
            groups = by_len.setdefault(len(row.prompt), [])
            if not groups or len(groups[-1]) == self.config.max_batch_size:
                groups.append([])
                order.append(groups[-1])
            groups[-1].append(row)
        return order

    @contextmanager
    def _session(
        self,
        seq_ids: list[str],
        prompt_len: int,
        max_len: int,
        attention: Attention,
        retro: RetroInferConfig,
        link: StoreLink,
    ) -> Iterator[AttentionBackend]:
        """An attention backend for B sequences; their store state is released on exit,
        whether the block succeeded or failed."""
        if attention == "full":
            yield self.loaded.new_full_attention(len(seq_ids), max_len)
            return
        try:
            link.open(seq_ids, self._geometry())
            yield RetroInferBackend(
                self.loaded.config, retro, link, seq_ids, prompt_len, self.loaded.dtype, self.device
            )
        finally:
            link.release(seq_ids)

    @torch.inference_mode()
    def _run_group(
        self, group: list[_Row], attention: Attention, retro: RetroInferConfig, link: StoreLink
    ) -> list[dict[str, object]]:
        prompt_len, max_new = len(group[0].prompt), max(r.request.max_new_tokens for r in group)
        before = link.counters.snapshot()
        seq_ids = [_sequence_id(r.request.id) for r in group]
        with self._session(
            seq_ids, prompt_len, prompt_len + max_new, attention, retro, link
        ) as backend:
            t0 = time.perf_counter()
            logits = self._prefill([r.prompt for r in group], backend)  # [B, V]
            link.flush()
            prefill_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            steps = self._decode(group, backend, logits, prompt_len)
            decode_s = time.perf_counter() - t1
        shared: dict[str, object] = {
            "attention": attention,
            "batch_size": len(group),
            "prompt_tokens": prompt_len,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "decode_steps": steps,
        }
        if isinstance(backend, RetroInferBackend):
            shared.update(backend.summary())
            shared.update(link.counters.since(before))
        return [
            {
                **shared,
                "new_tokens": len(r.out),
                "decode_tokens_per_s": len(r.out) / decode_s if decode_s > 0 else 0.0,
            }
            for r in group
        ]

    @torch.inference_mode()
    def forced_decode(
        self,
        prompt: Sequence[int],
        forced: Sequence[int],
        attention: Attention = "retroinfer",
        retro_config: RetroInferConfig | None = None,
        store: StoreLink | None = None,
    ) -> list[int]:
        """Teacher forcing: after `prompt`, feed `forced` one token at a time. Returns the greedy
        prediction made before each forced token (len(forced) ids): the k-th prediction is
        what the model would emit after prompt + forced[:k]."""
        if not prompt or not forced:
            raise ValueError(f"prompt ({len(prompt)}) and forced ({len(forced)}) must be non-empty")
        link = store if store is not None else InProcessStoreLink()
        prompt, forced = [int(t) for t in prompt], [int(t) for t in forced]
        with self._session(
            [_sequence_id("forced")],
            len(prompt),
            len(prompt) + len(forced),
            attention,
            retro_config or RetroInferConfig(),
            link,
        ) as backend:
            logits = self._prefill([prompt], backend)  # [1, V]
            link.flush()
            predictions = [int(logits[0].argmax())]
            for step, token in enumerate(forced[:-1]):
                meta = AttentionMetadata.decode([len(prompt) + step], self.device)
                tokens = torch.tensor([[token]], device=self.device)  # [1, 1]
                predictions.append(
                    int(self.model(tokens, meta, backend, last_only=True)[0].argmax())
                )
        return predictions

    def _prefill(self, prompts: list[list[int]], backend: AttentionBackend) -> torch.Tensor:
        """Chunked prefill of B equal-length prompts; logits [B, V] after the last token."""
        tokens = torch.tensor(prompts, device=self.device)  # [B, L]
        b, length = tokens.shape
        logits = None
        for start in range(0, length, self.config.prefill_chunk):
            chunk = tokens[:, start : start + self.config.prefill_chunk]  # [B, T]
            meta = AttentionMetadata.prefill([start] * b, [chunk.shape[1]] * b, self.device)
            logits = self.model(chunk, meta, backend, last_only=True)  # [B, V]
        assert logits is not None
        return logits

    def _decode(
        self, group: list[_Row], backend: AttentionBackend, logits: torch.Tensor, prompt_len: int
    ) -> int:
        """Sample, feed back, repeat until every row is done; returns decode forward calls."""
        eos = set(self.tokenizer.eos_token_ids)
        steps = 0
        while True:
            next_tokens = [self._pick(row, logits[i], eos) for i, row in enumerate(group)]
            if all(r.done for r in group):
                return steps
            meta = AttentionMetadata.decode([prompt_len + steps] * len(group), self.device)
            tokens = torch.tensor(next_tokens, device=self.device)[:, None]  # [B, 1]
            logits = self.model(tokens, meta, backend, last_only=True)  # [B, V]
            steps += 1

    def _pick(self, row: _Row, logits: torch.Tensor, eos: set[int]) -> int:
        """Next token of one row (a finished row keeps feeding its last token, ignored)."""
        if row.done:
            return row.out[-1] if row.out else row.prompt[-1]
        req = row.request
        token = sample_next(logits.float(), req.temperature, req.top_p, row.generator)
        row.out.append(token)
        stops = eos | set(req.stop_token_ids or ())
        if token in stops or len(row.out) >= req.max_new_tokens:
            row.done = True
        return token

    def _geometry(self) -> SequenceGeometry:
        c = self.loaded.config
        return SequenceGeometry(
            c.num_layers, c.num_kv_heads, c.head_dim, TORCH_TO_STORE_DTYPE[self.loaded.dtype]
        )


def _sequence_id(request_id: str) -> str:
    """A store sequence id unique to one run of one request."""
    return f"{request_id}-{uuid.uuid4().hex[:12]}"
