"""Haystack fillers: endless streams of text pieces, each starting with a space.

Pieces are whole sentences, so planted needles always sit between sentences; the last
piece of a haystack is cut at a token boundary to hit the exact prompt length.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from inference_worker.eval import vocab

NOISE_SENTENCES = (
    " The grass is green.",
    " The sky is blue.",
    " The sun is yellow.",
    " Here we go.",
    " There and back again.",
)

ESSAY_TEMPLATES = (
    " {name} {verb} the {adj} {noun} near the {noun2}.",
    " Nobody expected the {noun} to be so {adj} in the {season}.",
    " The {adj} {noun} stood beside an old {noun2} for many years.",
    " In the {season}, {name} often {verb} a {noun} in the {place}.",
    " Most people agree that a {adj} {noun} is better than a {adj2} one.",
    " A {noun} is only as {adj} as the {noun2} that holds it.",
    " {name} wrote a long letter about the {adj} {noun} and the {noun2}.",
    " There was a {adj} {noun} on the road to the {place}.",
    " The village council {verb} the {noun} before the {season} festival.",
    " Every morning the {adj} {noun} looked a little more {adj2}.",
    " It is hard to explain why the {noun} felt so {adj} that day.",
    " {name} and {name2} {verb} the {noun} together in the {place}.",
    " Some say the {noun2} of the {place} was once {adj}.",
    " The story of the {adj} {noun} is still told in the {place}.",
    " After the storm, {name} {verb} every {noun} in the {noun2}.",
    " A {adj} wind moved across the {place} and the {noun} was {adj2}.",
)

SEASONS = ("spring", "summer", "autumn", "winter")
PLACES = ("valley", "harbor", "market", "garden", "forest", "village", "library", "meadow")


def noise() -> Iterator[str]:
    """The classic passkey filler: five sentences repeated forever."""
    return itertools.cycle(NOISE_SENTENCES)


def essay_sentence(rng: random.Random) -> str:
    template = rng.choice(ESSAY_TEMPLATES)
    return template.format(
        name=rng.choice(vocab.FIRST_NAMES),
        name2=rng.choice(vocab.FIRST_NAMES),
        verb=rng.choice(vocab.VERBS_PAST),
        adj=rng.choice(vocab.ADJECTIVES),
        adj2=rng.choice(vocab.ADJECTIVES),
        noun=rng.choice(vocab.NOUNS),
        noun2=rng.choice(vocab.NOUNS),
        season=rng.choice(SEASONS),
        place=rng.choice(PLACES),
    )


def essay(rng: random.Random) -> Iterator[str]:
    """Endless seeded prose of plausible, meaningless sentences."""
    while True:
        yield essay_sentence(rng)


def make(kind: str, rng: random.Random) -> Iterator[str]:
    """A filler stream by name: `noise` or `essay`."""
    if kind == "noise":
        return noise()
    if kind == "essay":
        return essay(rng)
    raise ValueError(f"unknown haystack kind {kind!r}; expected 'noise' or 'essay'")
