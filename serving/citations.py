"""An answer's citations checked against the sources the RAG retrieved for it (pure).

The prompt asks the LLM to cite its sources by number (`[2]`), and a small model also writes what it
cites (`[2] (handbook.pdf, page 3)`). A number that is not one of the retrieved sources is removed with
its description; a description naming a file that is not that source's is removed and the number
kept. The answer says how many were removed. While an answer streams, `StreamingCheck` holds back
only the text that may still be a citation (from a `[` to its end) and lets the rest through at once.
"""

from __future__ import annotations

import re
from typing import Any

_CITATION = re.compile(r"[ \t]?\[(\d{1,4})\](?:[ \t]*\(([^()\n]{1,200})\))?")
_OPEN = re.compile(r"\[[\d]{0,4}(\](?:[ \t]*(\([^()\n]{0,200})?)?)?$")  # a citation that may not be finished


def check(text: str, sources: list[dict[str, Any]]) -> tuple[str, int]:
    """The text with the citations that are not the sources' removed, and how many were removed."""
    removed = 0

    def judged(m: re.Match) -> str:
        nonlocal removed
        k, described = int(m.group(1)), m.group(2)
        if not 1 <= k <= len(sources):
            removed += 1
            return ""
        if described is not None and str(sources[k - 1]["file"]) not in described:
            removed += 1
            return m.group(0)[:m.group(0).index("]") + 1]
        return m.group(0)

    return _CITATION.sub(judged, text), removed


class StreamingCheck:
    """`feed(piece)` gives what can be sent now; `end()` the rest; `removed` counts as `check` does."""

    def __init__(self, sources: list[dict[str, Any]]) -> None:
        self.sources, self.removed, self._held = sources, 0, ""

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
        out, n = check(ready, self.sources)
        self.removed += n
        return out

    def end(self) -> str:
        out, n = check(self._held, self.sources)
        self.removed += n
        self._held = ""
        return out
