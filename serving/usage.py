"""A generative answer's usage as the gateway counts it: tokens in (the prompt) and out (the completion),
and the time to its first token. Pure: no I/O.

mlyard's model server says it exactly (counted with the model's tokenizer, serving/openai_routes.py): in
an `x-mlyard-usage` header of a whole answer, and in a comment line of a stream (`: x-mlyard-usage ...`,
which server-sent-event clients skip) just before `data: [DONE]`. The gateway takes both off the answer
(`Scan`). An engine of a runtime variant (vLLM, TGI, llama.cpp's server...) says nothing of the kind: the
gateway reads OpenAI's own `usage` object from its whole answer, or from the stream's last chunk when the
client asked for it (`stream_options.include_usage`), and times the first token itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

HEADER = b"x-mlyard-usage"
_COMMENT = b": x-mlyard-usage "


@dataclass
class Usage:
    prompt: int
    completion: int
    ttft_ms: float | None = None  # None: not a generation (or not known)
    queued_ms: float | None = None  # the time it waited for a place in the model's batch (None: not known)
    queue: tuple[int, int] | None = None  # (generating, waiting) in the model's batch as the answer ended


def format_usage(prompt: int, completion: int, ttft_ms: float | None, queued_ms: float | None = None,
                 queue: tuple[int, int] | None = None) -> bytes:
    """`prompt=12;completion=30;ttft_ms=153.2;queued_ms=0.0;queue=8/3` (what is not known left out)."""
    out = f"prompt={prompt};completion={completion}"
    out = out if ttft_ms is None else f"{out};ttft_ms={ttft_ms:.1f}"
    out = out if queued_ms is None else f"{out};queued_ms={queued_ms:.1f}"
    return (out if queue is None else f"{out};queue={queue[0]}/{queue[1]}").encode()


def stream_comment(prompt: int, completion: int, ttft_ms: float | None, queued_ms: float | None = None,
                   queue: tuple[int, int] | None = None) -> bytes:
    """The usage as a stream's comment event."""
    return _COMMENT + format_usage(prompt, completion, ttft_ms, queued_ms, queue) + b"\n\n"


def parse_usage(value: bytes) -> Usage | None:
    """`format_usage`'s text back (None when it is not that: a replica's header is not trusted blindly)."""
    fields: dict[str, str] = {}
    for part in value.decode("latin-1").strip().split(";"):
        name, _, number = part.partition("=")
        fields[name] = number
    try:
        prompt, completion = int(fields["prompt"]), int(fields["completion"])
        ttft = float(fields["ttft_ms"]) if "ttft_ms" in fields else None
        queued = float(fields["queued_ms"]) if "queued_ms" in fields else None
        queue = tuple(int(n) for n in fields["queue"].split("/", 1)) if "queue" in fields else None
    except (KeyError, ValueError):
        return None
    if not (0 <= prompt < 1 << 31 and 0 <= completion < 1 << 31) or \
            any(t is not None and not 0 <= t < 1e9 for t in (ttft, queued)) or \
            queue is not None and (len(queue) != 2 or not all(0 <= n < 1 << 20 for n in queue)):
        return None
    return Usage(prompt, completion, ttft, queued, queue)  # type: ignore[arg-type]


def of_openai(doc: object) -> Usage | None:
    """OpenAI's `usage` object of a parsed answer or chunk (None without one)."""
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 31 for n in (prompt, completion)):
        return None
    return Usage(prompt, completion)  # type: ignore[arg-type]


class Scan:
    """An answer's usage, read as the gateway relays it: `feed` each piece of a stream (what to send on, the
    usage comment taken out), `whole` for an answer read at once. `started` is when the request came (a
    perf_counter time), to time an engine's first token."""

    def __init__(self, header: bytes | None, started: float, generative: bool):
        self.usage = parse_usage(header) if header is not None and generative else None
        self.started, self.generative = started, generative
        self.first_ms: float | None = None  # when the first piece came
        self._told = self.usage is not None  # the model server said it: nothing to look for
        self._json: bytearray | None = None  # an engine's whole answer sent in pieces (at most 1 MiB is kept)
        self._line = b""  # an engine's stream: the end of the last piece, an event line not finished yet
        self._carry = b""  # the start of what may be mlyard's comment, held back until the next piece

    def whole(self, body: bytes, now: float) -> bytes:
        """An answer that arrived whole (a short stream too): what to send on."""
        if not self.generative or self._told:
            return body
        if body.lstrip()[:1] != b"{":  # a stream, all here already
            return self.feed(body, now) + self.rest()
        if b'"usage"' in body:
            try:
                self.usage = of_openai(orjson.loads(body))
            except orjson.JSONDecodeError:
                pass
        return body

    def feed(self, chunk: bytes, now: float) -> bytes:
        if not self.generative:  # another route's answer passes untouched, whatever it holds
            return chunk
        first = self.first_ms is None and bool(chunk.strip())
        if first:
            self.first_ms = (now - self.started) * 1000
        chunk, self._carry = self._carry + chunk, b""
        at = chunk.find(_COMMENT)
        if at >= 0 and (end := chunk.find(b"\n\n", at)) >= 0:  # mlyard's model server: its comment, cut out
            said = parse_usage(chunk[at + len(_COMMENT):end])
            if said is not None:
                self.usage, self._told = said, True
            chunk = chunk[:at] + chunk[end + 2:]
        elif at >= 0:  # its comment, cut by the piece's end: held until its end comes
            chunk, self._carry = chunk[:at], chunk[at:][:4096]
        else:  # a piece that ends as the comment begins is held back too
            held = next((k for k in range(min(len(_COMMENT) - 1, len(chunk)), 0, -1) if chunk.endswith(_COMMENT[:k])), 0)
            if held:
                chunk, self._carry = chunk[:-held], chunk[-held:]
        if self._told:
            return chunk
        if self._json is not None or (first and chunk.lstrip()[:1] == b"{"):  # a JSON answer, not a stream
            if self._json is None:
                self._json = bytearray()
            if len(self._json) + len(chunk) <= 1 << 20:
                self._json += chunk
            return chunk
        text = self._line + chunk  # an engine's stream: its usage event, when the client asked for it
        lines = text.split(b"\n")
        self._line = lines.pop()[-65536:]
        for line in lines:
            if line.startswith(b"data: {") and b'"usage"' in line:
                try:
                    self.usage = of_openai(orjson.loads(line[6:])) or self.usage
                except orjson.JSONDecodeError:
                    continue
        return chunk

    def rest(self) -> bytes:
        """What was held back when the answer ends (it was not the comment after all): to send last."""
        rest, self._carry = self._carry, b""
        return rest if not rest.startswith(_COMMENT) else b""

    def result(self) -> Usage | None:
        """The usage, its first token timed here when the engine did not say (a stream's first piece)."""
        if self._json is not None and self.usage is None:
            self.whole(bytes(self._json), 0.0)
            self.first_ms = None  # a whole answer: no first token to time
        if self._line:  # a stream's last line, with no line break after it
            self.feed(b"\n", 0.0)
        if self.usage is not None and self.usage.ttft_ms is None and self.first_ms is not None and self.usage.completion:
            self.usage.ttft_ms = self.first_ms
        return self.usage
