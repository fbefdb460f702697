"""Decode steps of full attention replayed from one CUDA graph (removes launch overhead).

Applied from outside the model (gpt-fast style): the model and the backend are unchanged;
the backend only has to be built with fixed_kv_len=True so every step has the same shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from inference_worker.model.attention import AttentionMetadata
from inference_worker.model.full_attention import FullAttentionBackend
from inference_worker.model.llama import CausalLM

WARMUP_STEPS = 3


class GraphedDecoder:
    """One captured decode step for cache rows 0..B-1 of `backend` (CUDA only).

    step(tokens, start_pos) == model(tokens [B, 1], AttentionMetadata.decode(start_pos),
    backend, last_only=True), but replayed from a graph: logits [B, V] (a static buffer,
    overwritten by the next step; clone it to keep it).
    """

    def __init__(self, model: CausalLM, backend: FullAttentionBackend, batch_size: int) -> None:
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, got device={model.device}")
        if not backend.fixed_kv_len:
            raise ValueError("GraphedDecoder needs a FullAttentionBackend with fixed_kv_len=True")
        if not 1 <= batch_size <= backend.max_batch_size:
            raise ValueError(
                f"batch_size={batch_size} must lie in [1, max_batch_size={backend.max_batch_size}]"
            )
        self.batch_size = batch_size
        self.max_seq_len = backend.max_seq_len
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.int64, device=model.device)  # [B, 1]
        self.meta = AttentionMetadata.decode([0] * batch_size, model.device)
        self.graph = torch.cuda.CUDAGraph()
        self.logits = self._capture(model, backend)  # [B, V]

    @torch.inference_mode()
    def _capture(self, model: CausalLM, backend: FullAttentionBackend) -> Tensor:
        # Warm-up steps run for real: position S makes them write to the scratch column.
        self.meta.start_pos.fill_(self.max_seq_len)
        self.meta.positions.fill_(self.max_seq_len)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                model(self.tokens, self.meta, backend, last_only=True)
        torch.cuda.current_stream().wait_stream(stream)
        backend.forget_call()
        with torch.cuda.graph(self.graph):
            logits = model(self.tokens, self.meta, backend, last_only=True)  # [B, V]
        backend.forget_call()
        return logits

    @torch.inference_mode()
    def step(self, tokens: Tensor, start_pos: Sequence[int]) -> Tensor:
        """tokens [B] int64 on the device, start_pos B ints (cached lengths) -> logits [B, V]."""
        if len(start_pos) != self.batch_size or tokens.numel() != self.batch_size:
            raise ValueError(
                f"need {self.batch_size} tokens and start positions, got {tokens.numel()} "
                f"and {len(start_pos)}"
            )
        if min(start_pos) < 0 or max(start_pos) >= self.max_seq_len:
            raise ValueError(
                f"start_pos={list(start_pos)} must lie in [0, max_seq_len={self.max_seq_len})"
            )
        starts = torch.tensor(list(start_pos), dtype=torch.int64)  # [B] on the host
        self.tokens.copy_(tokens.view(self.batch_size, 1))
        self.meta.start_pos.copy_(starts, non_blocking=True)
        self.meta.positions.copy_(starts[:, None], non_blocking=True)
        self.graph.replay()
        return self.logits
