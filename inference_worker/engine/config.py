"""EngineConfig: what a GenerationEngine does, fixed at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from inference_worker.retroinfer import RetroInferConfig

Attention = Literal["retroinfer", "full"]
ATTENTIONS: tuple[Attention, ...] = ("retroinfer", "full")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Attention, the method's options and the scheduler's limits of one engine."""

    attention: Attention = "retroinfer"
    retro: RetroInferConfig = field(default_factory=RetroInferConfig)
    # sequences decoded together (batch slots); requests beyond it wait for a free slot
    max_batch_size: int = 8
    # prompt tokens per prefill forward call (one chunk per engine step, between decode steps)
    prefill_chunk: int = 1024
    # longest prompt + generation accepted; None: the model's context length
    max_model_len: int | None = None
    # decode steps replayed from CUDA graphs where the device allows (no effect on CPU)
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if not isinstance(self.retro, RetroInferConfig):
            raise ValueError(f"retro must be a RetroInferConfig, got {type(self.retro).__name__}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 or None, got {self.max_model_len}")
