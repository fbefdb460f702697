"""Question answering over planted facts about fictional people.

Every paragraph of the haystack is a short document with one fact about some made-up
person and two lines of prose; the queried document sits at the requested depth and the
distractor documents state the same relation about other people, so the model has to
bind the right person to the right answer. Completion style: the answer prompt repeats
the fact's wording up to the answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from inference_worker.eval import haystack, vocab
from inference_worker.eval.prompt import Plant, Sample, answer_budget, assemble
from inference_worker.eval.tokens import PieceEncoder

QA_PREFIX = "Answer the question based on the given documents.\n"
QA_SUFFIX = "\nQuestion: {question} Answer: {lead}"


def _town(rng: random.Random) -> str:
    return vocab.pseudo_word(rng, 3).capitalize()


def _company(rng: random.Random) -> str:
    return vocab.pseudo_word(rng, 2).capitalize() + rng.choice((" Labs", " Works", " Systems"))


@dataclass(frozen=True, slots=True)
class Relation:
    """A fact template: `{p}` is the person, `{a}` the answer."""

    fact: str
    question: str
    lead: str  # the completion prompt, the fact's wording up to the answer
    answer: Callable[[random.Random], str]


RELATIONS = (
    Relation(
        "{p} was born in the town of {a}.",
        "In which town was {p} born?",
        "{p} was born in the town of",
        _town,
    ),
    Relation(
        "{p} works as a {a}.",
        "What is the job of {p}?",
        "{p} works as a",
        lambda rng: rng.choice(vocab.PROFESSIONS),
    ),
    Relation(
        "The favorite color of {p} is {a}.",
        "What is the favorite color of {p}?",
        "The favorite color of {p} is",
        lambda rng: rng.choice(vocab.COLORS),
    ),
    Relation(
        "{p} founded a company called {a}.",
        "Which company did {p} found?",
        "{p} founded a company called",
        _company,
    ),
)


def _document(rng: random.Random, fact: str) -> str:
    return f" Document: {fact}" + haystack.essay_sentence(rng) + haystack.essay_sentence(rng)


def _distractors(rng: random.Random, relation: Relation, person: str) -> Iterator[str]:
    while True:
        other = vocab.random_person(rng)
        if other != person:
            yield _document(rng, relation.fact.format(p=other, a=relation.answer(rng)))


def planted_facts(enc: PieceEncoder, length: int, rng: random.Random, depth: float) -> Sample:
    """One queried fact at `depth` among documents with the same relation about others."""
    relation = rng.choice(RELATIONS)
    person = vocab.random_person(rng)
    answer = relation.answer(rng)
    fact = relation.fact.format(p=person, a=answer)
    plants = [Plant(_document(rng, fact), depth, "target")]
    suffix = QA_SUFFIX.format(
        question=relation.question.format(p=person), lead=relation.lead.format(p=person)
    )
    filler = _distractors(rng, relation, person)
    ids, spans = assemble(enc, length, QA_PREFIX, suffix, plants, filler)
    meta = {"person": person, "relation": relation.question}
    return Sample(
        "qa", length, 0, ids, [answer], "part", answer_budget(enc, [answer]), depth, spans, meta
    )
