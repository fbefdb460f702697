"""RULER-style string-match scoring."""

from __future__ import annotations

import pytest

from inference_worker.eval.scoring import contains, score


def test_exact_and_case_insensitive() -> None:
    assert score(" 71432. Remember it.", ["71432"], "all") == 100.0
    assert score(" The Needle is TIMBER", ["timber"], "all") == 100.0
    assert score(" 71433.", ["71432"], "all") == 0.0


def test_answer_glued_to_other_characters_does_not_count() -> None:
    assert not contains("912345", "12345")
    assert not contains("123456", "12345")
    assert not contains("a party", "art")
    assert contains("(12345)", "12345")
    assert contains("x-12345.", "12345")
    assert contains(
        "id a9e6e733-a7b3-2ee2-5a79-fa7c2886408b, done", "a9e6e733-a7b3-2ee2-5a79-fa7c2886408b"
    )


def test_partial_credit_for_multi_answer_tasks() -> None:
    answers = ["1111111", "2222222", "3333333", "4444444"]
    assert score("1111111, 3333333 and 9999999", answers, "all") == 50.0
    assert score("4444444 2222222 1111111 3333333", answers, "all") == 100.0
    assert score("nothing", answers, "all") == 0.0


def test_part_metric_any_answer_is_enough() -> None:
    assert score("Valmori", ["Valmori", "Talvi"], "part") == 100.0
    assert score("neither", ["Valmori", "Talvi"], "part") == 0.0


def test_regex_characters_in_answers_are_literal() -> None:
    assert score("a.b", ["a.b"], "all") == 100.0
    assert score("axb", ["a.b"], "all") == 0.0


def test_bad_inputs_raise_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="'exact'"):
        score("x", ["x"], "exact")
    with pytest.raises(ValueError, match="at least one"):
        score("x", [], "all")
    with pytest.raises(ValueError, match="non-empty"):
        score("x", [""], "all")
