"""TextStream (incremental detokenization with stop strings) against the plain reference: decode
everything at once and cut at the first stop string."""

from __future__ import annotations

import random

import pytest

from inference_worker.serve.text import TextStream

pytestmark = pytest.mark.slow  # the default model's tokenizer


@pytest.fixture(scope="module")
def tokenizer(default_engine):  # type: ignore[no-untyped-def]
    return default_engine.tokenizer


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


SAMPLES = [
    "Hello, world! Ünïcödé → 数据 and emoji 🙂🚀 mixed with ascii.",
    "The pass key is 71432. Remember it.\nEND of text. More after END.",
    "line one\n\nline two ### stop here ### not this",
]


@pytest.mark.parametrize("seed", range(6))
def test_deltas_add_up_to_the_reference(tokenizer, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    text = rng.choice(SAMPLES)
    ids = tokenizer.encode(text, add_special_tokens=False)
    words = [w for w in text.replace("\n", " ").split(" ") if w]
    stops = rng.sample(words, k=rng.randint(0, 2)) + rng.choice([[], ["###"], ["END"], ["🚀"]])
    stream = TextStream(tokenizer.decode, stops)
    emitted, pos = [], 0
    while pos < len(ids) and not stream.stopped:
        n = rng.randint(1, 3)
        emitted.append(stream.add(ids[pos : pos + n]))
        pos += n
    emitted.append(stream.flush())
    expected, stopped = reference(tokenizer.decode(ids), stops)
    if stopped:  # the stream may stop before consuming every token
        assert stream.stopped and "".join(emitted) == stream.text == expected
    else:
        assert not stream.stopped and "".join(emitted) == expected
    assert "\ufffd" not in "".join(emitted[:-1])  # no half characters while streaming


def test_a_partial_stop_string_is_held_back(tokenizer) -> None:  # type: ignore[no-untyped-def]
    stream = TextStream(lambda ids: "".join(chr(i) for i in ids), ["STOP"])
    assert stream.add([ord(c) for c in "abST"]) == "ab"  # "ST" may begin STOP
    assert stream.add([ord("x")]) == "STx"
    assert stream.add([ord(c) for c in "STOPyz"]) == ""
    assert stream.stopped and stream.text == "abSTx"
    assert stream.add([ord("q")]) == "" and stream.flush() == ""
