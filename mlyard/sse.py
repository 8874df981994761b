"""Reading an OpenAI-style server-sent event stream (chat completions with `"stream": true`): the one
reader behind `mlyard endpoints chat` and `mlyard rags query`."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator


def chunks(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """Each `data:` event's JSON, until `data: [DONE]`; other lines (comments, blanks) are skipped."""
    for raw in lines:
        text = (raw.decode() if isinstance(raw, bytes) else raw).strip()
        if not text.startswith("data:"):
            continue
        data = text[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def delta_text(chunk: dict[str, Any]) -> str:
    """The text a chunk adds to the answer (its choices' `delta.content`)."""
    return "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices", []))
