"""Variable tracking (RULER's VT): follow a chain of assignments through noise."""

from __future__ import annotations

import random

from inference_worker.eval import haystack, vocab
from inference_worker.eval.prompt import Plant, Sample, answer_budget, assemble
from inference_worker.eval.tokens import PieceEncoder

VT_PREFIX = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
VT_SUFFIX = (
    "\nQuestion: Find all variables that are assigned the value {value} in the text above. "
    "Answer: According to the chain(s) of variable assignment in the text above, "
    "{n} variables are assigned the value {value}, they are:"
)


def variable_tracking(
    enc: PieceEncoder,
    length: int,
    rng: random.Random,
    depth: float,
    num_chains: int = 1,
    num_hops: int = 4,
) -> Sample:
    """`num_chains` chains of `num_hops` hops; the first assignment of chain 0 sits at `depth`.

    Later hops follow at increasing depths between the first hop and the end, so every
    chain reads in order. Distractor chains start from other values.
    """
    names = vocab.unique_values(rng, "variable", num_chains * (num_hops + 1))
    values = vocab.unique_values(rng, "number", num_chains, exclude=set())
    plants: list[Plant] = []
    for c in range(num_chains):
        chain = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
        start = depth if c == 0 else rng.random()
        hops = sorted(start + (1.0 - start) * rng.random() for _ in range(num_hops))
        tag = "needle" if c == 0 else "distractor"
        plants.append(Plant(f" VAR {chain[0]} = {values[c]}.", start, "target" if c == 0 else tag))
        for prev, name, d in zip(chain[:-1], chain[1:], hops, strict=True):
            plants.append(Plant(f" VAR {name} = VAR {prev}.", d, tag))
    answers = names[: num_hops + 1]
    suffix = VT_SUFFIX.format(value=values[0], n=num_hops + 1)
    ids, spans = assemble(enc, length, VT_PREFIX, suffix, plants, haystack.noise())
    meta = {"value": values[0], "num_chains": num_chains, "num_hops": num_hops}
    return Sample(
        "vt", length, 0, ids, answers, "all", answer_budget(enc, answers), depth, spans, meta
    )
