"""Request and result types of the generation engine (plain dataclasses, JSON friendly)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class GenerationRequest:
    """One prompt to complete.

    `prompt` is text (tokenized by the engine's tokenizer) or token ids. Sampling is greedy when
    `temperature == 0`; otherwise temperature + nucleus (top-p) sampling with a per-request seed.
    """

    id: str
    prompt: str | list[int]
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens must be >= 1, got {self.max_new_tokens} (id={self.id!r})"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature} (id={self.id!r})")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p} (id={self.id!r})")
        if isinstance(self.prompt, str) and not self.prompt:
            raise ValueError(f"prompt is empty (id={self.id!r})")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError(f"prompt has no tokens (id={self.id!r})")

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_max_new_tokens: int = 32) -> GenerationRequest:
        """Build from one JSONL input line: {"id", "prompt", optional "max_new_tokens", ...}."""
        for key in ("id", "prompt"):
            if key not in data:
                raise ValueError(f"input record lacks field {key!r}: {sorted(data)}")
        known = {"id", "prompt", "max_new_tokens", "temperature", "top_p", "seed", "stop_token_ids"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"input record {data['id']!r} has unknown fields {unknown}")
        kwargs = {k: data[k] for k in known if k in data and k not in ("id", "prompt")}
        kwargs.setdefault("max_new_tokens", default_max_new_tokens)
        return cls(id=str(data["id"]), prompt=data["prompt"], **kwargs)


@dataclass(slots=True)
class GenerationResult:
    """The completion of one request plus its statistics (see `RequestStats`)."""

    id: str
    text: str
    token_ids: list[int]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
