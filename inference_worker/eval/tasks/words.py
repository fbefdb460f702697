"""Aggregation tasks: common-words (CWE) and frequent-words (FWE) extraction."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator

from inference_worker.eval import vocab
from inference_worker.eval.prompt import Sample, answer_budget, assemble, haystack_budget
from inference_worker.eval.tokens import PieceEncoder

CWE_PREFIX = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n"
)
CWE_SUFFIX = (
    "\nQuestion: What are the {n} most common words in the above list? "
    "Answer: The top {n} words that appear most often in the list are:"
)
FWE_PREFIX = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words.\n"
)
FWE_SUFFIX = (
    "\nQuestion: What are the three most frequently appeared words in the above coded text? "
    "Answer: According to the coded text above, the three most frequently appeared words are:"
)


def _numbered(words: list[str], pad: Iterator[str]) -> Iterator[str]:
    """` 1. apple`, ` 2. river`, ... then numbered single-use pad words forever."""
    for i, word in enumerate(itertools.chain(words, pad), start=1):
        yield f" {i}. {word}"


def _cwe_words(
    enc: PieceEncoder, budget: int, rng: random.Random, num_cw: int, freq_cw: int, freq_ucw: int
) -> tuple[list[str], list[str], int]:
    """Common words, the shuffled list that fits `budget`, and the common-word frequency used."""
    item = 1.0 + enc.count(" 100.") + sum(enc.count(" " + w) for w in vocab.REAL_WORDS[:50]) / 50
    slots = budget / item
    freq = min(freq_cw, int(0.5 * slots / num_cw))
    if freq < freq_ucw + 2:
        raise ValueError(
            f"length too short for CWE: {budget} haystack tokens hold ~{slots:.0f} items"
        )
    words: list[str] = []
    pool = vocab.word_pool(rng, num_cw + int(slots / freq_ucw) + 1)
    common, rest = pool[:num_cw], pool[num_cw:]
    for word in common:
        words += [word] * freq
    cost = sum(enc.count(f" {i}. {w}") for i, w in enumerate(words, start=1))
    for word in rest:
        extra = sum(enc.count(f" {len(words) + j}. {word}") for j in range(1, freq_ucw + 1))
        if cost + extra > budget:
            break
        words += [word] * freq_ucw
        cost += extra
    rng.shuffle(words)
    return common, words, freq


def common_words(
    enc: PieceEncoder,
    length: int,
    rng: random.Random,
    depth: float,
    num_cw: int = 10,
    freq_cw: int = 30,
    freq_ucw: int = 3,
) -> Sample:
    """`num_cw` words appear `freq` times (up to `freq_cw`, fewer in short prompts), others
    `freq_ucw` times; the answer is the common words (partial credit)."""
    suffix = CWE_SUFFIX.format(n=num_cw)
    budget = haystack_budget(enc, length, CWE_PREFIX, suffix, [])
    common, words, freq = _cwe_words(enc, budget, rng, num_cw, freq_cw, freq_ucw)
    pad = (vocab.pseudo_word(rng, 4) for _ in itertools.count())
    ids, _ = assemble(enc, length, CWE_PREFIX, suffix, [], _numbered(words, pad))
    meta = {"freq_cw": freq, "freq_ucw": freq_ucw, "list_items": len(words)}
    return Sample("cwe", length, 0, ids, common, "all", answer_budget(enc, common), None, [], meta)


def _zipf_counts(n: int, vocab_size: int, alpha: float) -> list[int]:
    weights = [r**-alpha for r in range(1, vocab_size + 1)]
    total = sum(weights)
    return [max(1, round(n * w / total)) for w in weights]


def _fwe_words(
    enc: PieceEncoder, budget: int, rng: random.Random, vocab_size: int, alpha: float
) -> tuple[list[str], list[str]]:
    """Top-3 coded words and the shuffled Zipf-distributed text that fits `budget`."""
    coded = vocab.unique_values(rng, "coded", vocab_size)
    costs = [enc.count(" " + w) for w in coded]

    def cost(n: int) -> int:
        return sum(c * k for c, k in zip(costs, _zipf_counts(n, vocab_size, alpha), strict=True))

    lo, hi = 0, budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
    counts = _zipf_counts(lo, vocab_size, alpha)
    if not counts[0] > counts[1] > counts[2] > counts[3] or cost(lo) > budget:
        raise ValueError(f"length too short for FWE: {budget} haystack tokens")
    words = [w for w, k in zip(coded, counts, strict=True) for _ in range(k)]
    rng.shuffle(words)
    return coded[:3], words


def frequent_words(
    enc: PieceEncoder,
    length: int,
    rng: random.Random,
    depth: float,
    vocab_size: int = 200,
    alpha: float = 2.0,
) -> Sample:
    """Coded words with Zipf(`alpha`) frequencies; the answer is the three most frequent."""
    budget = haystack_budget(enc, length, FWE_PREFIX, FWE_SUFFIX, [])
    top, words = _fwe_words(enc, budget, rng, vocab_size, alpha)
    taken = set(words)
    pad = (w for w in (vocab.coded_word(rng) for _ in itertools.count()) if w not in taken)
    filler = (" " + w for w in itertools.chain(words, pad))
    ids, _ = assemble(enc, length, FWE_PREFIX, FWE_SUFFIX, [], filler)
    counts = Counter(words)
    meta = {"top_counts": [counts[w] for w in top], "text_words": len(words)}
    return Sample("fwe", length, 0, ids, top, "all", answer_budget(enc, top), None, [], meta)
