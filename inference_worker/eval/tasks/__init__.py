"""Task registry: every task is a seeded generator of exact-length samples."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from inference_worker.eval.prompt import Sample
from inference_worker.eval.tasks.niah import NiahSpec, niah, passkey
from inference_worker.eval.tasks.qa import planted_facts
from inference_worker.eval.tasks.tracking import variable_tracking
from inference_worker.eval.tasks.words import common_words, frequent_words
from inference_worker.eval.tokens import PieceEncoder

Generator = Callable[[PieceEncoder, int, random.Random, float], Sample]

_NIAH = {
    "niah_single_number": NiahSpec(value_kind="number"),
    "niah_single_uuid": NiahSpec(value_kind="uuid"),
    "niah_single_word": NiahSpec(value_kind="word"),
    "niah_multikey": NiahSpec(num_keys=4),
    "niah_multikey_dense": NiahSpec(haystack="needles"),
    "niah_multikey_uuid": NiahSpec(key_kind="uuid", value_kind="uuid", num_keys=4),
    "niah_multivalue": NiahSpec(num_values=4),
    "niah_multiquery": NiahSpec(num_keys=4, num_queries=4),
}

TASKS: dict[str, Generator] = {
    "passkey": passkey,
    **{name: functools.partial(niah, spec, name) for name, spec in _NIAH.items()},
    "vt": variable_tracking,
    "cwe": common_words,
    "fwe": frequent_words,
    "qa": planted_facts,
}

DEFAULT_DEPTHS = tuple(i / 10 for i in range(11))  # 0%, 10%, ..., 100%


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    """The RNG of one sample: a pure function of (seed, task, length, index)."""
    return random.Random(f"wavekv-eval/{seed}/{task}/{length}/{index}")


def sample_depth(seed: int, task: str, length: int, index: int, depths: tuple[float, ...]) -> float:
    """Depths cycle through `depths` from a seeded offset, so few samples still spread out."""
    offset = random.Random(f"wavekv-eval-depth/{seed}/{task}/{length}").randrange(len(depths))
    return depths[(offset + index) % len(depths)]


def make_sample(
    task: str,
    enc: PieceEncoder,
    length: int,
    index: int,
    seed: int,
    depths: tuple[float, ...] = DEFAULT_DEPTHS,
) -> Sample:
    """Sample `index` of `task` at `length` tokens; identical for identical arguments."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    depth = sample_depth(seed, task, length, index, depths)
    sample = TASKS[task](enc, length, sample_rng(seed, task, length, index), depth)
    sample.index = index
    return sample
