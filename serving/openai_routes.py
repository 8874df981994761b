"""`/openai/v1/...` (chat completions and completions, streamed as server-sent events or not) for one
chat model of serving/generative.py, as part of the model server (serving/app.py): the request checked
field by field, generation on a thread, OpenAI's response and error shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from typing import Any, AsyncGenerator, AsyncIterator

import orjson

from mlyard.core.connection import REPLICA_HEADER
from mlyard.serving import asgi
from mlyard.serving.generative import DEFAULT_MAX_TOKENS, MAX_TOKENS, BadChat, ChatModel
from mlyard.serving.sampling import MAX_N, Piece, from_request, integer
from mlyard.serving.usage import HEADER, Usage, format_usage, stream_comment


class OpenAIRoutes:
    """`/openai/v1/...` for one chat model, as part of the model server (serving/app.py)."""

    def __init__(self, chat: ChatModel, max_body_bytes: int = 4 * 1024 * 1024, stats: Any = None, log: Any = None):
        self.chat, self.max_body, self.stats, self.log = chat, max_body_bytes, stats, log
        self._words: dict[int, str] = {}  # token ids decoded, for logprobs

    async def __call__(self, scope: dict, receive: asgi.Receive, send: asgi.Send) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        started = time.perf_counter()
        try:
            if path == "/openai/v1/models" and method == "GET":
                return await asgi.reply(send, 200, orjson.dumps({"object": "list", "data": [
                    {"id": self.chat.name, "object": "model", "created": 0, "owned_by": "mlyard",
                     "mlyard": {"note": self.chat.note, "temperature": self.chat.temperature,
                                "context": self.chat.context, "queue": self.chat.queue()}}]}))
            if path in ("/openai/v1/chat/completions", "/openai/v1/completions"):
                if method != "POST":
                    raise BadChat(f"method {method} is not allowed here; use POST", status=405)
                try:
                    body = await asgi.read_body(receive, self.max_body)
                except asgi.BodyTooLarge as exc:
                    raise BadChat(str(exc), status=413) from None
                usage = await self._complete(scope, receive, send, body, path.endswith("chat/completions"), started)
                self._record(scope, started, usage, 200)
                return
            raise BadChat(f"no route {method} {path}; use /openai/v1/chat/completions or /openai/v1/completions",
                          status=404)
        except BadChat as exc:
            self._record(scope, started, None, exc.status, str(exc))
            if exc.started:  # the stream is open: end it with the error as an event
                doc = {"error": {"message": str(exc), "type": "server_error", "param": exc.param, "code": exc.code}}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(doc) + b"\n\n"})
                return
            kind = "invalid_request_error" if exc.status < 500 else "server_error"
            await asgi.reply(send, exc.status, orjson.dumps(
                {"error": {"message": str(exc), "type": kind, "param": exc.param, "code": exc.code}}),
                headers=[(b"retry-after", str(exc.retry_after).encode())] if exc.retry_after else [])

    def _record(self, scope: dict, started: float, usage: Usage | None, status: int, error: str | None = None) -> None:
        seconds = time.perf_counter() - started
        if self.stats is not None and status != 404:
            self.stats.record(self.chat.name, seconds, usage.completion if usage else 0, status)
        if self.log is not None:
            self.log.request(self.chat.name, scope["method"], scope["path"], status, usage.completion if usage else 0,
                             seconds, uuid.uuid4().hex, error, usage=usage)

    async def _complete(self, scope: dict, receive: asgi.Receive, send: asgi.Send, raw: bytes, chat: bool,
                        started: float) -> Usage:
        """Answer one completion: its usage (tokens in and out, counted with the model's tokenizer, and the
        time to its first token), which the answer also carries for the gateway (serving/usage.py)."""
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadChat(f"the body is not valid JSON ({exc})") from None
        if not isinstance(req, dict):
            raise BadChat("the body must be a JSON object")
        if req.get("model") not in (None, self.chat.name):
            raise BadChat(f"model {req.get('model')!r} is not served here; served: {self.chat.name}", "model", 404,
                          "model_not_found")
        messages, prompt = (_messages(req.get("messages")), None) if chat else (None, _prompt(req.get("prompt")))
        max_tokens = req.get("max_completion_tokens", req.get("max_tokens", DEFAULT_MAX_TOKENS))
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS:
            field = "max_completion_tokens" if "max_completion_tokens" in req else "max_tokens"
            raise BadChat(f"{field} must be an integer from 1 to {MAX_TOKENS}", field)
        _refuse_unsupported(req, chat)
        sampling = from_request(req, chat, self.chat.vocab)
        n = integer(req, "n", 1, MAX_N, 1) or 1
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise BadChat("stop must be a string or a list of at most 4 strings", "stop")
        stream = req.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise BadChat("stream must be true or false", "stream")
        options = req.get("stream_options") or {}
        inputs = self.chat.prompt_ids(messages, prompt)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + max_tokens > self.chat.context:  # refused before a stream opens
            raise BadChat(f"the prompt ({prompt_tokens} tokens) and max_tokens ({max_tokens}) exceed the model's "
                          f"context of {self.chat.context} tokens", "max_tokens")
        cancel = threading.Event()
        counted = Usage(prompt_tokens, 0)
        batcher = self.chat.batcher()
        if batcher is not None and not batcher.fits(prompt_tokens, max_tokens):
            batcher = None  # longer than the batch's cache can ever hold: generated alone
        sources = []
        for i in range(n):  # n answers: n requests in the batch, the seed (if any) moved on for each
            one = sampling if n == 1 or sampling.seed is None else sampling.with_seed(sampling.seed + i)
            if batcher is not None:  # joins the running batch at its next token (serving/continuous.py)
                sources.append(batcher.generate(inputs["input_ids"][0].tolist(), one, max_tokens, stop, cancel,
                                                admitted=lambda s: setattr(counted, "queued_ms", s * 1000)))
            else:
                sources.append(_in_thread(lambda one=one: self.chat.generate(inputs, one, max_tokens, stop, cancel)))
        pieces = _merged(sources)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if stream:
            watch = asyncio.ensure_future(_disconnected(receive, cancel))
            try:
                async with contextlib.aclosing(pieces):  # left early: its generations end
                    await self._stream(send, pieces, rid, created, chat, n, counted, started,
                                       bool(isinstance(options, dict) and options.get("include_usage")),
                                       any(k == REPLICA_HEADER for k, _ in scope["headers"]), sampling.logprobs)
                    return counted
            finally:
                cancel.set()  # the client left, or the stream ended: the generation stops either way
                watch.cancel()
        texts, records = [""] * n, [[] for _ in range(n)]  # type: ignore[var-annotated]
        finishes: list[str | None] = [None] * n
        async with contextlib.aclosing(pieces):  # left early: its generations end
            async for i, piece in pieces:
                if counted.ttft_ms is None:
                    counted.ttft_ms = (time.perf_counter() - started) * 1000
                texts[i] += piece.text
                records[i] += piece.logprobs
                if piece.finish:
                    finishes[i], counted.completion = piece.finish, counted.completion + piece.tokens
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": counted.completion,
                 "total_tokens": prompt_tokens + counted.completion}
        choices: list[dict[str, Any]]
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": texts[i], "refusal": None},
                        "finish_reason": finishes[i], "logprobs": self._logprobs(records[i], sampling.logprobs, True)}
                       for i in range(n)]
        else:
            choices = [{"index": i, "text": texts[i], "finish_reason": finishes[i],
                        "logprobs": self._logprobs(records[i], sampling.logprobs, False)} for i in range(n)]
        doc = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
               "model": self.chat.name, "choices": choices, "usage": usage}
        counted.queue = _queue(self.chat)
        await asgi.reply(send, 200, orjson.dumps(doc), headers=[
            (HEADER, format_usage(counted.prompt, counted.completion, counted.ttft_ms, counted.queued_ms, counted.queue))])
        return counted

    def _logprobs(self, records: list, wanted: int | None, chat: bool, offset: int = 0) -> dict | None:
        """OpenAI's logprobs object of these tokens (None when the request did not ask): chat's `content` list,
        or the legacy route's parallel lists (text_offset counted from `offset`)."""
        if wanted is None:
            return None
        word = self._token_text
        if chat:
            return {"content": [{"token": word(t), "logprob": lp, "bytes": list(word(t).encode()),
                                 "top_logprobs": [{"token": word(a), "logprob": alp, "bytes": list(word(a).encode())}
                                                  for a, alp in top]} for t, lp, top in records], "refusal": None}
        offsets = []
        for t, _, _ in records:
            offsets.append(offset)
            offset += len(word(t))
        return {"tokens": [word(t) for t, _, _ in records], "token_logprobs": [lp for _, lp, _ in records],
                "top_logprobs": [{word(a): alp for a, alp in top} for _, _, top in records] if wanted else None,
                "text_offset": offsets}

    def _token_text(self, token: int) -> str:
        text = self._words.get(token)
        if text is None:
            text = self._words[token] = self.chat.tokenizer.decode([token])
        return text

    async def _stream(self, send: asgi.Send, pieces: AsyncIterator[tuple[int, Piece]], rid: str, created: int,
                      chat: bool, n: int, counted: Usage, started: float, include_usage: bool, gateway: bool,
                      logprobs: int | None) -> None:
        """Server-sent events: a chunk per piece of text of each choice, each choice's finish reason, optionally
        the usage, the usage for the gateway as a comment (`gateway`: the request came through it; it takes the
        line out), [DONE]. `counted` is filled in as tokens come."""
        head = {"id": rid, "created": created, "model": self.chat.name,
                "object": "chat.completion.chunk" if chat else "text_completion"}
        offsets = [0] * n

        def event(choices: list, **extra: Any) -> dict:
            return {"type": "http.response.body", "more_body": True,
                    "body": b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"}

        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        if chat:  # the role first, as OpenAI sends it
            for i in range(n):
                await send(event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None}]))
        try:
            async for i, piece in pieces:
                if counted.ttft_ms is None:
                    counted.ttft_ms = (time.perf_counter() - started) * 1000
                counted.completion += piece.tokens
                scores = self._logprobs(piece.logprobs, logprobs, chat, offsets[i]) if piece.logprobs else None
                if chat:
                    choice = {"index": i, "delta": {"content": piece.text} if piece.text else {}, "logprobs": scores,
                              "finish_reason": piece.finish}
                else:
                    choice = {"index": i, "text": piece.text, "finish_reason": piece.finish, "logprobs": scores}
                offsets[i] += len(piece.text)
                await send(event([choice]))
        except BadChat as exc:
            exc.started = True
            raise
        if include_usage:
            await send(event([], usage={"prompt_tokens": counted.prompt, "completion_tokens": counted.completion,
                                        "total_tokens": counted.prompt + counted.completion},
                             mlyard={"queued_ms": counted.queued_ms, "queue": self.chat.queue()}))
        if gateway:
            counted.queue = _queue(self.chat)
            await send({"type": "http.response.body", "more_body": True, "body": stream_comment(
                counted.prompt, counted.completion, counted.ttft_ms, counted.queued_ms, counted.queue)})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _queue(chat: ChatModel) -> tuple[int, int] | None:
    said = chat.queue()
    return (said["running"], said["waiting"]) if said else None


async def _disconnected(receive: asgi.Receive, cancel: threading.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    cancel.set()


def _in_thread(make) -> AsyncIterator[Piece]:
    """Run a blocking generator on a thread; its items arrive as an async iterator (errors become BadChat)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    def work() -> None:
        try:
            for item in make():
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # noqa: BLE001 - handed to the request
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        loop.call_soon_threadsafe(queue.put_nowait, end)

    threading.Thread(target=work, name="mlyard-chat", daemon=True).start()

    async def items() -> AsyncIterator[Piece]:
        while True:
            item = await queue.get()
            if item is end:
                return
            if isinstance(item, BadChat):
                raise item
            if isinstance(item, BaseException):
                raise BadChat(f"the model failed: {type(item).__name__}: {item}", status=500) from item
            yield item

    return items()


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise BadChat("messages must be a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise BadChat(f"messages[{i}].role must be system, user or assistant", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise BadChat(f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out


def _prompt(raw: Any) -> str:
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        raw = raw[0]
    if not isinstance(raw, str) or not raw:
        raise BadChat("prompt must be a non-empty string", "prompt")
    return raw


def _refuse_unsupported(req: dict, chat: bool) -> None:
    """The fields this server cannot answer as OpenAI would, refused in one line each rather than ignored."""
    fmt = req.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind not in (None, "text"):
        raise BadChat(f"response_format {kind!r} is not supported: this engine cannot constrain an answer to JSON; "
                      "leave response_format out (or {\"type\": \"text\"}) and ask for JSON in the prompt",
                      "response_format")
    for name in ("tools", "functions") if chat else ("suffix",):
        if req.get(name):
            raise BadChat(f"{name} is not supported by this server; leave it out", name)
    if not chat and req.get("echo"):
        raise BadChat("echo is not supported by this server; leave it out", "echo")
    if not chat and req.get("best_of") not in (None, 1):
        raise BadChat("best_of is not supported by this server (use n); leave it out", "best_of")


async def _merged(sources: list[AsyncIterator[Piece]]) -> AsyncGenerator[tuple[int, Piece], None]:
    """(choice index, piece) of several generations as they come; closing it ends them all."""
    if len(sources) == 1:
        try:
            async for piece in sources[0]:
                yield 0, piece
        finally:
            await sources[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, source: AsyncIterator[Piece]) -> None:
        try:
            async for piece in source:
                await queue.put((i, piece))
            await queue.put((i, None))
        except Exception as exc:  # noqa: BLE001 - handed to the request
            await queue.put((i, exc))

    tasks = [asyncio.ensure_future(pump(i, source)) for i, source in enumerate(sources)]
    left = len(sources)
    try:
        while left:
            i, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
