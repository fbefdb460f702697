"""Task generators: exact lengths with the real tokenizer, determinism, needle placement."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from inference_worker.eval.prompt import Sample
from inference_worker.eval.tasks import DEFAULT_DEPTHS, TASKS, make_sample, sample_depth
from inference_worker.eval.tokens import PieceEncoder, default_tokenizer

NEEDLE_TASKS = [t for t in TASKS if t not in ("cwe", "fwe")]


@pytest.fixture(scope="module")
def enc() -> PieceEncoder:
    return PieceEncoder(default_tokenizer())


class BosEosTokenizer:
    """Wraps the real tokenizer the way Llama-style tokenizers behave: BOS and EOS on encode."""

    def __init__(self, inner: object, bos: int = 1, eos: int = 2) -> None:
        self.inner, self.bos, self.eos = inner, bos, eos

    def encode(self, text: str) -> list[int]:
        return [self.bos, *self.inner.encode(text), self.eos]  # type: ignore[attr-defined]

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode([i for i in ids if i not in (self.bos, self.eos)])  # type: ignore[attr-defined]


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", [1024, 2048, 7680, 3001])
def test_exact_length_and_canonical_tokens(enc: PieceEncoder, task: str, length: int) -> None:
    sample = make_sample(task, enc, length, index=0, seed=7)
    assert len(sample.token_ids) == length
    assert sample.length == length and sample.task == task
    # The pieces join at clean boundaries: re-tokenizing the text gives the same ids.
    assert enc.tokenizer.encode(enc.decode(sample.token_ids)) == sample.token_ids
    assert sample.answers and all(sample.answers)
    assert 1 <= sample.max_new_tokens <= 96


@pytest.mark.parametrize("task", ["passkey", "niah_multivalue", "vt", "cwe", "fwe", "qa"])
def test_tokenizer_with_bos_gets_exactly_one_bos(enc: PieceEncoder, task: str) -> None:
    wrapped = PieceEncoder(BosEosTokenizer(enc.tokenizer))
    assert wrapped.prompt_prefix == [1]
    sample = make_sample(task, wrapped, 2048, index=1, seed=3)
    assert len(sample.token_ids) == 2048
    assert sample.token_ids[0] == 1
    assert 1 not in sample.token_ids[1:] and 2 not in sample.token_ids


@pytest.mark.parametrize("task", list(TASKS))
def test_same_seed_same_sample_other_seed_differs(enc: PieceEncoder, task: str) -> None:
    a = make_sample(task, enc, 2048, index=2, seed=11)
    b = make_sample(task, PieceEncoder(enc.tokenizer), 2048, index=2, seed=11)
    c = make_sample(task, enc, 2048, index=2, seed=12)
    d = make_sample(task, enc, 2048, index=3, seed=11)
    assert (a.token_ids, a.answers, a.depth) == (b.token_ids, b.answers, b.depth)
    assert a.token_ids != c.token_ids
    assert a.token_ids != d.token_ids


def _check_needle(enc: PieceEncoder, sample: Sample, depth: float) -> None:
    needle = next(s for s in sample.spans if s.tag == "target")
    text = enc.decode(sample.token_ids[needle.start : needle.end])
    assert sample.answers[0] in text and text.strip() == needle.text.strip()
    haystack = len(sample.token_ids) - 200  # prefix + question are < 200 tokens
    assert abs(needle.depth - depth) <= 40 / haystack  # one filler piece is < 40 tokens


@pytest.mark.parametrize("task", NEEDLE_TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_answer_sits_at_requested_depth(enc: PieceEncoder, task: str, depth: float) -> None:
    sample = make_sample(task, enc, 4096, index=0, seed=5, depths=(depth,))
    assert sample.depth == depth
    _check_needle(enc, sample, depth)
    text = enc.decode(sample.token_ids)
    for answer in sample.answers:
        assert answer in text


def test_depth_extremes_put_needle_at_haystack_edges(enc: PieceEncoder) -> None:
    first = make_sample("passkey", enc, 2048, index=0, seed=1, depths=(0.0,))
    last = make_sample("passkey", enc, 2048, index=0, seed=1, depths=(1.0,))
    prefix_len = enc.count(
        "There is an important info hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about the important information there.\n"
    )
    assert first.spans[0].start == prefix_len
    suffix_len = enc.count("\nWhat is the pass key? The pass key is")
    assert last.spans[0].end == 2048 - suffix_len


def test_depths_cycle_over_samples() -> None:
    depths = [sample_depth(0, "passkey", 2048, i, DEFAULT_DEPTHS) for i in range(11)]
    assert sorted(depths) == sorted(DEFAULT_DEPTHS)


def test_prompts_are_completion_style(enc: PieceEncoder) -> None:
    text = enc.decode(make_sample("passkey", enc, 1024, 0, 0).token_ids)
    assert text.endswith("What is the pass key? The pass key is")
    qa = make_sample("qa", enc, 1024, 0, 0)
    assert enc.decode(qa.token_ids).count(qa.meta["person"]) == 3  # document, question, answer lead


def test_variable_chain_in_order(enc: PieceEncoder) -> None:
    sample = make_sample("vt", enc, 4096, 0, 9)
    text = enc.decode(sample.token_ids)
    positions = [text.index(f"VAR {name} =") for name in sample.answers]
    assert positions == sorted(positions)
    assert f"VAR {sample.answers[0]} = {sample.meta['value']}." in text
    for prev, name in zip(sample.answers, sample.answers[1:], strict=False):
        assert f"VAR {name} = VAR {prev}." in text


@pytest.mark.parametrize("length", [1024, 7680])
def test_common_words_are_the_most_common(enc: PieceEncoder, length: int) -> None:
    sample = make_sample("cwe", enc, length, 0, 4)
    text = enc.decode(sample.token_ids)
    items = re.findall(r" \d+\. ([a-z]+)(?= \d+\.)", text)  # complete items only
    counts = Counter(items)
    common = {counts[w] for w in sample.answers}
    assert common == {sample.meta["freq_cw"]}
    others = [c for w, c in counts.items() if w not in sample.answers]
    assert max(others) < sample.meta["freq_cw"]


@pytest.mark.parametrize("length", [1024, 7680])
def test_frequent_words_are_the_top_three(enc: PieceEncoder, length: int) -> None:
    sample = make_sample("fwe", enc, length, 0, 4)
    body = enc.decode(sample.token_ids).split("\n")[1]
    counts = Counter(body.split()[:-1])  # the last word may be cut short
    top = [w for w, _ in counts.most_common(3)]
    assert top == sample.answers
    assert counts.most_common(4)[2][1] > counts.most_common(4)[3][1]


def test_bad_inputs_name_the_value(enc: PieceEncoder) -> None:
    with pytest.raises(ValueError, match="'nope'"):
        make_sample("nope", enc, 1024, 0, 0)
    with pytest.raises(ValueError, match="length 100 is too short"):
        make_sample("niah_multiquery", enc, 100, 0, 0)
    with pytest.raises(ValueError, match="CWE"):
        make_sample("cwe", enc, 200, 0, 0)
    with pytest.raises(ValueError, match="-1"):
        make_sample("passkey", enc, -1, 0, 0)
