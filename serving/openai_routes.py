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
from typing import Any, AsyncIterator

import orjson

from mlyard.core.connection import REPLICA_HEADER
from mlyard.serving import asgi
from mlyard.serving.continuous import MAX_SEQUENCE_TOKENS
from mlyard.serving.generative import DEFAULT_MAX_TOKENS, MAX_TOKENS, BadChat, ChatModel
from mlyard.serving.usage import HEADER, Usage, format_usage, stream_comment


class OpenAIRoutes:
    """`/openai/v1/...` for one chat model, as part of the model server (serving/app.py)."""

    def __init__(self, chat: ChatModel, max_body_bytes: int = 4 * 1024 * 1024, stats: Any = None, log: Any = None):
        self.chat, self.max_body, self.stats, self.log = chat, max_body_bytes, stats, log

    async def __call__(self, scope: dict, receive: asgi.Receive, send: asgi.Send) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        started = time.perf_counter()
        try:
            if path == "/openai/v1/models" and method == "GET":
                return await asgi.reply(send, 200, orjson.dumps({"object": "list", "data": [
                    {"id": self.chat.name, "object": "model", "created": 0, "owned_by": "mlyard"}]}))
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
                {"error": {"message": str(exc), "type": kind, "param": exc.param, "code": exc.code}}))

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
            raise BadChat(f"max_tokens must be an integer from 1 to {MAX_TOKENS}", "max_tokens")
        temperature = _number(req.get("temperature", 1.0), "temperature", 0.0, 2.0)
        top_p = _number(req.get("top_p", 1.0), "top_p", 0.0, 1.0)
        if req.get("n", 1) not in (1, None):
            raise BadChat("only n=1 is supported", "n")
        for field in ("logprobs", "top_logprobs"):  # not computed here: refused rather than answered null
            if req.get(field) not in (None, False, 0):
                raise BadChat(f"{field} is not supported by this server; leave it out", field)
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise BadChat("stop must be a string or a list of at most 4 strings", "stop")
        seed = req.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise BadChat("seed must be an integer", "seed")
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
        fits = prompt_tokens + max_tokens <= MAX_SEQUENCE_TOKENS  # the cache each sequence of the batch has
        batcher = self.chat.batcher() if temperature == 0 and fits else None
        if batcher is not None:  # joins the running batch at its next token (serving/continuous.py)
            pieces = batcher.generate(inputs["input_ids"][0].tolist(), max_tokens, stop, cancel)
        else:
            pieces = _in_thread(lambda: self.chat.generate(inputs, max_tokens, temperature, top_p, stop, seed, cancel))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        counted = Usage(prompt_tokens, 0)
        if stream:
            watch = asyncio.ensure_future(_disconnected(receive, cancel))
            try:
                async with contextlib.aclosing(pieces):  # type: ignore[type-var]  # left early: its generation ends
                    await self._stream(send, pieces, rid, created, chat, counted, started,
                                       bool(isinstance(options, dict) and options.get("include_usage")),
                                       any(k == REPLICA_HEADER for k, _ in scope["headers"]))
                    return counted
            finally:
                cancel.set()  # the client left, or the stream ended: the generation stops either way
                watch.cancel()
        text, finish = "", None
        async with contextlib.aclosing(pieces):  # type: ignore[type-var]  # left early: its generation ends
            async for piece, done, tokens in pieces:
                if counted.ttft_ms is None:
                    counted.ttft_ms = (time.perf_counter() - started) * 1000
                text += piece
                finish, counted.completion = done or finish, tokens or counted.completion
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": counted.completion,
                 "total_tokens": prompt_tokens + counted.completion}
        if chat:
            doc = {"id": rid, "object": "chat.completion", "created": created, "model": self.chat.name,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                "finish_reason": finish, "logprobs": None}], "usage": usage}
        else:
            doc = {"id": rid, "object": "text_completion", "created": created, "model": self.chat.name,
                   "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}], "usage": usage}
        await asgi.reply(send, 200, orjson.dumps(doc), headers=[
            (HEADER, format_usage(counted.prompt, counted.completion, counted.ttft_ms))])
        return counted

    async def _stream(self, send: asgi.Send, pieces: AsyncIterator[tuple[str, str | None, int]], rid: str,
                      created: int, chat: bool, counted: Usage, started: float, include_usage: bool,
                      gateway: bool) -> None:
        """Server-sent events: a chunk per piece of text, the finish reason, optionally the usage, the usage
        for the gateway as a comment (`gateway`: the request came through it; it takes the line out),
        [DONE]. `counted` is filled in as tokens come."""
        head = {"id": rid, "created": created, "model": self.chat.name,
                "object": "chat.completion.chunk" if chat else "text_completion"}

        def event(choices: list, **extra: Any) -> dict:
            return {"type": "http.response.body", "more_body": True,
                    "body": b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"}

        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        if chat:  # the role first, as OpenAI sends it
            await send(event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        try:
            async for piece, finish, tokens in pieces:
                if counted.ttft_ms is None:
                    counted.ttft_ms = (time.perf_counter() - started) * 1000
                counted.completion = tokens or counted.completion
                if chat:
                    choice = {"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": finish, "logprobs": None}
                await send(event([choice]))
        except BadChat as exc:
            exc.started = True
            raise
        if include_usage:
            await send(event([], usage={"prompt_tokens": counted.prompt, "completion_tokens": counted.completion,
                                        "total_tokens": counted.prompt + counted.completion}))
        if gateway:
            await send({"type": "http.response.body", "more_body": True,
                        "body": stream_comment(counted.prompt, counted.completion, counted.ttft_ms)})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _disconnected(receive: asgi.Receive, cancel: threading.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    cancel.set()


def _in_thread(make) -> AsyncIterator[tuple[str, str | None, int]]:
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

    async def items() -> AsyncIterator[tuple[str, str | None, int]]:
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


def _number(value: Any, name: str, low: float, high: float) -> float:
    if value is None:
        return high if name == "top_p" else 1.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise BadChat(f"{name} must be a number from {low:g} to {high:g}", name)
    return float(value)
