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
