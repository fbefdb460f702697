"""Exact-length prompt assembly and the Sample record every task produces.

A prompt is `prompt_prefix + prefix + haystack (with planted pieces) + suffix`, where the
haystack is filled from a stream of text pieces until the total is exactly the requested
number of tokens. Pieces are encoded separately and concatenated as token ids, so the
length is exact for any tokenizer; planted pieces go in at piece boundaries nearest to
their requested depth, and their real token positions and depths are recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from inference_worker.eval.tokens import PieceEncoder


@dataclass(slots=True)
class Plant:
    """A piece of text to plant in the haystack at `depth` (0.0 = start, 1.0 = end).

    Tags: `target` is the queried piece placed at the sample's depth, `needle` another
    piece the answer needs, `distractor` a piece the answer must not use.
    """

    text: str
    depth: float
    tag: str = "needle"

    def __post_init__(self) -> None:
        if not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {self.depth!r} for {self.tag!r}")


@dataclass(slots=True)
class Span:
    """Where a planted piece landed: token positions [start, end) in the prompt."""

    tag: str
    text: str
    start: int
    end: int
    depth: float  # haystack tokens before the piece / haystack tokens


@dataclass(slots=True)
class Sample:
    """One evaluation prompt with its reference answers."""

    task: str
    length: int
    index: int
    token_ids: list[int]  # exactly `length` ids
    answers: list[str]
    metric: str  # "all": partial credit over answers; "part": any answer is enough
    max_new_tokens: int
    depth: float | None = None  # requested depth of the queried needle, if the task has one
    spans: list[Span] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.task}/{self.length}/{self.index}"


def haystack_budget(
    enc: PieceEncoder, length: int, prefix: str, suffix: str, plants: Iterable[Plant]
) -> int:
    """Haystack tokens left for filler once prefix, suffix and plants are counted."""
    fixed = len(enc.prompt_prefix) + enc.count(prefix) + enc.count(suffix)
    fixed += sum(enc.count(p.text) for p in plants)
    return length - fixed


def _fill(enc: PieceEncoder, budget: int, filler: Iterator[str]) -> list[list[int]]:
    """Filler pieces totalling exactly `budget` tokens (the last one cut short)."""
    pieces: list[list[int]] = []
    total = 0
    while total < budget:
        try:
            ids = enc.encode(next(filler))
        except StopIteration as exc:
            raise ValueError(f"haystack ran out after {total} of {budget} tokens") from exc
        if not ids:
            continue
        take = min(len(ids), budget - total)
        pieces.append(ids[:take])
        total += take
    return pieces


def _boundary(offsets: list[int], target: float) -> int:
    """Index of the piece boundary whose token offset is nearest to `target`."""
    best = 0
    for i, off in enumerate(offsets):
        if abs(off - target) < abs(offsets[best] - target):
            best = i
    return best


def assemble(
    enc: PieceEncoder,
    length: int,
    prefix: str,
    suffix: str,
    plants: list[Plant],
    filler: Iterator[str],
) -> tuple[list[int], list[Span]]:
    """Token ids of exactly `length` tokens and the spans of the planted pieces."""
    budget = haystack_budget(enc, length, prefix, suffix, plants)
    if budget < 0:
        raise ValueError(f"length {length} is too short: the fixed text needs {length - budget}")
    pieces = _fill(enc, budget, filler)
    offsets = [0]
    for ids in pieces:
        offsets.append(offsets[-1] + len(ids))
    slots = [_boundary(offsets, p.depth * budget) for p in plants]
    order = sorted(range(len(plants)), key=lambda i: (slots[i], i))
    tokens = list(enc.prompt_prefix) + list(enc.encode(prefix))
    spans: list[Span] = []
    cursor = 0
    for i in order:
        for ids in pieces[cursor : slots[i]]:
            tokens.extend(ids)
        cursor = max(cursor, slots[i])
        plant_ids = enc.encode(plants[i].text)
        depth = offsets[cursor] / budget if budget else 0.0
        spans.append(
            Span(plants[i].tag, plants[i].text, len(tokens), len(tokens) + len(plant_ids), depth)
        )
        tokens.extend(plant_ids)
    for ids in pieces[cursor:]:
        tokens.extend(ids)
    tokens.extend(enc.encode(suffix))
    assert len(tokens) == length, (len(tokens), length)
    return tokens, spans


ANSWER_CAP = 96  # most new tokens any task generates


def answer_budget(enc: PieceEncoder, answers: list[str], cap: int = ANSWER_CAP) -> int:
    """New tokens to generate: room for all answers as a list, plus a small margin."""
    listed = ", ".join(answers)
    return min(cap, enc.count(" " + listed) + 2 * len(answers) + 6)
