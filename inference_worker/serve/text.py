"""Incremental detokenization with stop strings, for streamed and whole responses.

Decoding token by token breaks multi-byte characters and the tokenizer's spacing, so the text
is decoded from all tokens so far and the new suffix is emitted. A trailing replacement
character (an incomplete UTF-8 sequence) is held back, and so is any tail that could still
grow into a stop string; the text ends before the first stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """Tokens in, text deltas out; `stopped` once a stop string appeared."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str]) -> None:
        self.decode = decode
        self.stops = list(stops)
        self.tokens: list[int] = []
        self.text = ""  # the visible text (stop string excluded)
        self.sent = 0  # characters of `text` already emitted
        self.stopped = False

    def add(self, token_ids: Sequence[int]) -> str:
        """Append tokens; returns the text that can be emitted now."""
        if self.stopped or not token_ids:
            return ""
        self.tokens.extend(token_ids)
        full = self.decode(self.tokens)
        cut = self._first_stop(full)
        if cut is not None:
            self.text, self.stopped = full[:cut], True
            return self._emit(len(self.text))
        self.text = full
        safe = len(full.rstrip(REPLACEMENT)) - self._partial_stop(full)
        return self._emit(safe)

    def flush(self) -> str:
        """Everything not yet emitted (the request is done)."""
        return self._emit(len(self.text.rstrip(REPLACEMENT)))

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : upto], upto
        return delta

    def _first_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s, max(self.sent - len(s), 0)) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
