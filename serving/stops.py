"""Stop strings in generated text, as OpenAI's `stop` works: the answer is cut before the first one, and
while it streams, the tail that could still become one is held back (serving/generative.py,
serving/continuous.py)."""

from __future__ import annotations


def first_stop(text: str, stops: list[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def partial_stop(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop sequence (held back from streaming)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class TextStream:
    """A generation's tokens to its text pieces: decoded step by step (the fast tokenizer's DecodeStream, so a
    character split over tokens comes whole), cut before the first stop string, and the tail that could still
    become one held back until it does not."""

    def __init__(self, tokenizer, stop: list[str]):
        from tokenizers.decoders import DecodeStream

        self._rust, self._decoder = tokenizer._tokenizer, DecodeStream(skip_special_tokens=True)
        self.stop, self.text, self.sent, self.stopped = stop, "", 0, False

    def feed(self, tokens: list[int]) -> str:
        """The text that can be sent after these tokens (possibly empty); `stopped` once a stop string is met."""
        for token in tokens:
            self.text += self._decoder.step(self._rust, token) or ""
        cut = first_stop(self.text, self.stop)
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
        return self._take(0 if self.stopped else partial_stop(self.text, self.stop))

    def rest(self) -> str:
        """What was held back, once the generation ended without meeting a stop string."""
        return self._take(0)

    def _take(self, hold: int) -> str:
        end = max(len(self.text) - hold, self.sent)
        piece, self.sent = self.text[self.sent:end], end
        return piece
