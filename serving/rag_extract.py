"""An extractive answer from a RAG's retrieved passages: the sentences closest to the question, each
with the number of the passage it comes from. What a RAG answers when no capable model writes for it
(the built-in SmolLM2, 135M parameters, wrote empty or wrong answers with citations that made them look
sourced), so that it never cites a passage it did not draw on.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
MIN_SCORE = 0.3  # a sentence less similar to the question than this does not answer it
NEAR_BEST = 0.8  # a second sentence is quoted only when it is nearly as close as the best
NOTE = ("(Sentences quoted from the retrieved passages; for a written answer, point llm.base_url or llm.endpoint "
        "at a capable chat model.)")


def sentences(text: str) -> list[str]:
    """The sentences of a passage (a line, or text up to a `.`, `!` or `?`), without empty ones."""
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) > 2]


def extract(question: str, passages: Sequence[str], encode: Callable[[list[str]], Any], most: int = 2) -> str:
    """The `most` sentences of `passages` closest to `question` (by the RAG's own embedding, normalized),
    best first, each followed by `[n]`, the 1-based number of its passage; then NOTE. No sentence close
    enough: says so."""
    found = [(n, s) for n, text in enumerate(passages, 1) for s in sentences(text)]
    if not found:
        return "The retrieved passages hold no text to answer from. " + NOTE
    vectors = np.asarray(encode([question] + [s for _, s in found]), dtype=np.float32)
    scores = vectors[1:] @ vectors[0]
    order = np.argsort(-scores)[:most]
    floor = max(MIN_SCORE, NEAR_BEST * float(scores[order[0]]))  # a runner-up far behind the best answers less
    best = [i for i in order if scores[i] >= floor]
    if not best:
        return "None of the retrieved passages answers this closely. " + NOTE
    return " ".join(f"{found[i][1]} [{found[i][0]}]" for i in best) + "\n\n" + NOTE
