"""Passkey retrieval and the needle-in-a-haystack family (RULER's NIAH variants)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from inference_worker.eval import haystack, vocab
from inference_worker.eval.prompt import Plant, Sample, answer_budget, assemble
from inference_worker.eval.tokens import PieceEncoder

PASSKEY_PREFIX = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there.\n"
)
PASSKEY_SUFFIX = "\nWhat is the pass key? The pass key is"

NIAH_PREFIX = (
    "Some special magic {vtype} are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {vtype} afterwards.\n"
)
NEEDLE = " One of the special magic {vtype} for {key} is: {value}."
VALUE_TYPES = {"number": "numbers", "uuid": "uuids", "word": "words"}


@dataclass(frozen=True, slots=True)
class NiahSpec:
    """One NIAH variant: haystack kind, key/value kinds and how many needles."""

    haystack: str = "essay"  # "noise" | "essay" | "needles" (distractor needles as filler)
    key_kind: str = "keyword"  # "keyword" | "uuid" | "number"
    value_kind: str = "number"  # "number" | "uuid" | "word"
    num_keys: int = 1  # needles with distinct keys (the others are distractors)
    num_values: int = 1  # values planted for each queried key
    num_queries: int = 1  # keys asked about

    def __post_init__(self) -> None:
        if self.value_kind not in VALUE_TYPES:
            raise ValueError(
                f"value_kind must be one of {sorted(VALUE_TYPES)}, got {self.value_kind!r}"
            )
        if not 1 <= self.num_queries <= self.num_keys:
            raise ValueError(
                f"need 1 <= num_queries <= num_keys, got {self.num_queries} and {self.num_keys}"
            )
        if self.num_values < 1:
            raise ValueError(f"num_values must be >= 1, got {self.num_values}")


def passkey(enc: PieceEncoder, length: int, rng: random.Random, depth: float) -> Sample:
    key = vocab.random_number(rng, digits=5)
    needle = f" The pass key is {key}. Remember it. {key} is the pass key."
    plants = [Plant(needle, depth, "target")]
    ids, spans = assemble(enc, length, PASSKEY_PREFIX, PASSKEY_SUFFIX, plants, haystack.noise())
    return Sample("passkey", length, 0, ids, [key], "all", answer_budget(enc, [key]), depth, spans)


def _distractor_needles(rng: random.Random, spec: NiahSpec, used: set[str]) -> Iterator[str]:
    vtype = VALUE_TYPES[spec.value_kind]
    while True:
        key = vocab.unique_values(rng, spec.key_kind, 1, exclude=used)[0]
        used.add(key)
        value = vocab.unique_values(rng, spec.value_kind, 1)[0]
        yield NEEDLE.format(vtype=vtype, key=key, value=value)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _question(spec: NiahSpec, queries: list[str]) -> str:
    vtype = VALUE_TYPES[spec.value_kind]
    keys = _join(queries)
    if spec.num_values == 1 and spec.num_queries == 1:
        one = vtype[:-1]
        return (
            f"\nWhat is the special magic {one} for {keys} mentioned in the provided text? "
            f"The special magic {one} for {keys} mentioned in the provided text is"
        )
    return (
        f"\nWhat are all the special magic {vtype} for {keys} mentioned in the provided text? "
        f"The special magic {vtype} for {keys} mentioned in the provided text are"
    )


def niah(
    spec: NiahSpec, name: str, enc: PieceEncoder, length: int, rng: random.Random, depth: float
) -> Sample:
    """A NIAH sample: the first queried needle sits at `depth`, the others at random depths."""
    vtype = VALUE_TYPES[spec.value_kind]
    keys = vocab.unique_values(rng, spec.key_kind, spec.num_keys)
    values = vocab.unique_values(rng, spec.value_kind, spec.num_keys * spec.num_values)
    plants: list[Plant] = []
    answers: list[str] = []
    for k, key in enumerate(keys):
        for v in range(spec.num_values):
            value = values[k * spec.num_values + v]
            queried = k < spec.num_queries
            main = queried and not plants
            tag = "target" if main else "needle" if queried else "distractor"
            plants.append(
                Plant(
                    NEEDLE.format(vtype=vtype, key=key, value=value),
                    depth if main else rng.random(),
                    tag,
                )
            )
            if queried:
                answers.append(value)
    if spec.haystack == "needles":
        filler = _distractor_needles(rng, spec, set(keys))
    else:
        filler = haystack.make(spec.haystack, rng)
    prefix = NIAH_PREFIX.format(vtype=vtype)
    suffix = _question(spec, keys[: spec.num_queries])
    ids, spans = assemble(enc, length, prefix, suffix, plants, filler)
    meta = {"keys": keys[: spec.num_queries], "spec": spec.__class__.__name__}
    return Sample(
        name, length, 0, ids, answers, "all", answer_budget(enc, answers), depth, spans, meta
    )
