"""An answer's citations checked against the sources the RAG retrieved for it (pure).

The prompt asks the LLM to cite its sources by number (`[2]`), and a small model also writes what it
cites (`[2] (handbook.pdf, page 3)`). A number that is not one of the retrieved sources is removed with
its description; a description naming a file that is not that source's is removed and the number
kept. Given the passages themselves, a citation is also removed when the claim it closes (the words
since the last sentence's end) shares no content word with the passage it names, or fewer than a
quarter of its own: a generated answer cites only passages it drew on (the built-in SmolLM2 wrote "[2]"
alone, or "The answer to this question is: [1]"). The answer says how many were removed. While an
answer streams, `StreamingCheck` holds back only the text that may still be a citation (from a `[` to
its end), remembers what it let through for the next claim, and lets the rest through at once.
"""

from __future__ import annotations

import re
from typing import Any

_CITATION = re.compile(r"[ \t]?\[(\d{1,4})\](?:[ \t]*\(([^()\n]{1,200})\))?")
_OPEN = re.compile(r"\[[\d]{0,4}(\](?:[ \t]*(\([^()\n]{0,200})?)?)?$")  # a citation that may not be finished
_TRAILING = re.compile(r"(?:[\s,;:.!?]|\[\d{1,4}\](?:[ \t]*\([^()\n]{0,200}\))?)+$")  # citations and stops
_CLAIM_START = re.compile(r".*(?:[.!?]\s|\n|\])", re.S)  # up to the last sentence's end or citation
_WORD = re.compile(r"[^\W_]+")
_STOP = frozenset("""the and for are was were with that this from into onto over under about than then
there their they them these those what which when where who whom whose how why not but can could would
should will shall may might must has have had does did done been being its it's you your our ours his
her hers she him any all each per via also only just very more most some such answer question source
sources passage passages according context""".split())
REMEMBERED = 400  # characters of the answer kept to judge the claim of the next citation


def content_words(text: str) -> set[str]:
    """A text's words that carry content, cut to six letters (so "logs" and "log", "kept" and "keeping")."""
    return {w[:6] for w in _WORD.findall(text.lower()) if (len(w) >= 3 or w.isdigit()) and w not in _STOP}


def claim_before(text: str) -> str:
    """The words a citation at the end of `text` stands for: since the last sentence's end or citation,
    past the citations and stops right before it ("... for 35 days. [1][2]" stands for "... 35 days")."""
    text = _TRAILING.sub("", text)
    m = _CLAIM_START.match(text)
    return text[m.end():] if m else text


def drew_on(claim: str, passage: str) -> bool:
    words = content_words(claim)
    shared = len(words & content_words(passage))
    return shared >= 1 and shared * 4 >= len(words)


def check(text: str, sources: list[dict[str, Any]], passages: list[str] | None = None,
          before: str = "") -> tuple[str, int]:
    """The text with the citations that are not the sources' (or, given the passages, not drawn on)
    removed, and how many were removed. `before`: the answer's text ahead of `text`, for the first claim."""
    removed = 0

    def judged(m: re.Match) -> str:
        nonlocal removed
        k, described = int(m.group(1)), m.group(2)
        if not 1 <= k <= len(sources):
            removed += 1
            return ""
        if passages is not None and not drew_on(claim_before(before + m.string[:m.start()]), passages[k - 1]):
            removed += 1
            return ""
        if described is not None and str(sources[k - 1]["file"]) not in described:
            removed += 1
            return m.group(0)[:m.group(0).index("]") + 1]
        return m.group(0)

    return _CITATION.sub(judged, text), removed


class StreamingCheck:
    """`feed(piece)` gives what can be sent now; `end()` the rest; `removed` counts as `check` does."""

    def __init__(self, sources: list[dict[str, Any]], passages: list[str] | None = None) -> None:
        self.sources, self.passages, self.removed, self._held, self._sent = sources, passages, 0, "", ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        cut = text.rfind("[")
        if cut >= 0 and _OPEN.search(text[cut:]) and len(text) - cut < 220:
            ready, self._held = text[:cut], text[cut:]
            if ready.endswith((" ", "\t")):  # the space before a citation goes with it
                ready, self._held = ready[:-1], ready[-1] + self._held
        elif text.endswith((" ", "\t")):  # a citation may follow: it takes its space with it
            ready, self._held = text[:-1], text[-1]
        else:
            ready, self._held = text, ""
        return self._judged(ready)

    def end(self) -> str:
        held, self._held = self._held, ""
        return self._judged(held)

    def _judged(self, text: str) -> str:
        out, n = check(text, self.sources, self.passages, self._sent)
        self.removed += n
        self._sent = (self._sent + out)[-REMEMBERED:]
        return out
