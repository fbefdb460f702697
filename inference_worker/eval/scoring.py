"""RULER-style string-match scoring, 0-100 per sample.

- `all`: the share of reference answers found in the prediction (partial credit for
  multi-answer tasks: multi-value/multi-query NIAH, VT, CWE, FWE).
- `part`: 100 if any reference answer is found (QA with alternative answers).

Matching is case-insensitive like RULER's, with one deliberate tightening: an answer must
not be glued to a letter or digit on either side, so `1234` does not match inside `91234`
and `art` does not match inside `party`.
"""

from __future__ import annotations

import re

METRICS = ("all", "part")


def contains(prediction: str, answer: str) -> bool:
    """`answer` occurs in `prediction` (case-insensitive) with no letter/digit glued to it."""
    if not answer:
        raise ValueError("reference answer must be a non-empty string")
    pattern = r"(?<![0-9A-Za-z])" + re.escape(answer) + r"(?![0-9A-Za-z])"
    return re.search(pattern, prediction, flags=re.IGNORECASE) is not None


def score(prediction: str, answers: list[str], metric: str) -> float:
    """Score of one prediction against its reference answers, in [0, 100]."""
    if not answers:
        raise ValueError("answers must hold at least one reference answer")
    hits = [contains(prediction, a) for a in answers]
    if metric == "all":
        return 100.0 * sum(hits) / len(hits)
    if metric == "part":
        return 100.0 if any(hits) else 0.0
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
