"""A retrieval-quality set from real documentation that ships with Python itself: the language
reference topics of `pydoc_data.topics` (what `help("with")` shows), one file per topic, and questions
whose answer is in one known topic. `python examples/rag/quality.py DIR` writes the documents.

Hit rate@5: the share of questions with a chunk of the right topic among the first five retrieved;
MRR: the mean of 1/rank of the first such chunk (0 when none in the first ten)."""

from __future__ import annotations

import sys
from pathlib import Path

MAX_TOPIC_CHARS = 10_000  # the reference's longest pages (special method names, compound statements, ...) left out

QUESTIONS = [
    ("What does the pass statement do?", "pass"),
    ("Which statement goes on with the next cycle of the nearest enclosing loop?", "continue"),
    ("How do I leave the nearest enclosing loop early?", "break"),
    ("What can the body of a lambda expression contain?", "lambda"),
    ("What does the global statement declare?", "global"),
    ("How do I rebind a variable of the enclosing function scope?", "nonlocal"),
    ("Are assert statements removed when optimization is requested?", "assert"),
    ("Which values are considered false in a Boolean context?", "truth"),
    ("How does deleting a name binding work?", "del"),
    ("How are exceptions chained with the from clause when raising?", "raise"),
    ("When does the finally clause of a try statement run?", "try"),
    ("How does the import statement find and load a module?", "import"),
    ("What does yield do inside a generator function?", "yield"),
    ("How are floating point literals written?", "floating"),
    ("How do I write an integer literal in hexadecimal or binary?", "integers"),
    ("Which operators bind more tightly than others (precedence)?", "operator-summary"),
    ("How does a slice select a range of items from a sequence?", "slicings"),
    ("What does the Ellipsis object represent?", "bltin-ellipsis-object"),
    ("What is the null object None?", "bltin-null-object"),
    ("How do augmented assignments like += work?", "augassign"),
    ("How does a class definition create a class object?", "class"),
    ("What does await do in a coroutine?", "await"),
    ("How are the shift operators << and >> defined?", "shifting"),
    ("How does the with statement use __enter__ and __exit__?", "with"),
    ("How are string literal prefixes like r and b interpreted?", "strings"),
]


def topics() -> dict[str, str]:
    from pydoc_data.topics import topics as all_topics

    return {k: v for k, v in all_topics.items() if len(v) <= MAX_TOPIC_CHARS}


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in topics().items():
        (folder / f"{name}.md").write_text(text)
    return sorted(folder.iterdir())


def score(ranked: list[list[str]]) -> tuple[float, float]:
    """hit rate@5 and MRR@10 of ranked file names (one list per question, in QUESTIONS' order)."""
    hits, rr = 0, 0.0
    for (_, topic), files in zip(QUESTIONS, ranked):
        names = [Path(f).stem for f in files]
        hits += topic in names[:5]
        rr += 1 / (names.index(topic) + 1) if topic in names[:10] else 0.0
    return hits / len(QUESTIONS), rr / len(QUESTIONS)


if __name__ == "__main__":
    print(len(write(Path(sys.argv[1] if len(sys.argv) > 1 else "python-reference"))), "documents")
