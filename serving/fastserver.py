"""A lean HTTP/1.1 server for an ASGI app whose requests are small: the gateway's front side.

uvicorn spends about 100 µs of CPU per request here on its general machinery (a task and a cycle
object per request, checks on every message, one socket write per message), which is most of the
gateway's budget. This server parses with httptools (as uvicorn does), buffers each request body
(the app refuses large ones itself), hands the app one `http.request` message, and writes a response
whose body comes in one message as a single write with its Content-Length. A streamed response
(server-sent events) goes out chunk by chunk as it comes, with chunked transfer encoding unless the
app gave a length. Keep-alive, pipelined requests (answered in order), and `Connection: close` are
honoured; a malformed request gets 400 and the connection is closed.

Not here, on purpose: TLS, WebSockets, HTTP/2, `Expect: 100-continue` beyond answering it, trailers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import deque
from http import HTTPStatus
from typing import Any, Callable

import httptools

log = logging.getLogger("mlyard.fastserver")
MAX_BODY = 64 * 1024 * 1024
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))


class _Connection(asyncio.Protocol):
    def __init__(self, app: Any, server: "Server"):
        self.app, self.server = app, server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple] = deque()
        self.busy = False
        self.closing = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self.client: tuple[str, int] | None = None

    # asyncio.Protocol
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.transport is not None:
                body = f'{{"error": "malformed HTTP request: {type(exc).__name__}"}}'.encode()
                self.transport.write(_status_line(400) + b"content-type: application/json\r\ncontent-length: "
                                     + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size, self._too_large = b"", [], [], 0, False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.transport is not None and (b"expect", b"100-continue") in self._headers:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            self._too_large = True
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = (self.parser.get_method().decode("ascii"), url.path.decode("latin-1"), url.query or b"",
                   self._headers, body, self.parser.should_keep_alive(), self._too_large)
        self.pending.append(request)
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self.pending and not self.closing:
                await self._one(*self.pending.popleft())
        finally:
            self.busy = False

    async def _one(self, method: str, path: str, query: bytes, headers: list, body: bytes, keep_alive: bool,
                   too_large: bool) -> None:
        transport = self.transport
        assert transport is not None
        if too_large:
            msg = b'{"error": "the request body is over the limit"}'
            transport.write(_status_line(413) + b"content-type: application/json\r\ncontent-length: "
                            + str(len(msg)).encode() + b"\r\nconnection: close\r\n\r\n" + msg)
            transport.close()
            self.closing = True
            return
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode("latin-1"), "query_string": query,
                 "root_path": "", "headers": headers, "client": self.client, "server": self.server.address}
        sent_body = False
        received = False
        state: dict[str, Any] = {"head": None, "chunked": False, "started": False}

        async def receive() -> dict:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal sent_body
            kind = message["type"]
            if kind == "http.response.start":
                state["head"] = (message["status"], message.get("headers", []))
                return
            if kind != "http.response.body":
                return
            if self.closing:  # the client went away: the app stops (and lets go of its upstream)
                raise ConnectionResetError("the client closed the connection")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if not state["started"]:
                status, head_headers = state["head"]
                has_length = any(k.lower() == b"content-length" for k, _ in head_headers)
                lines = [_status_line(status)]
                for k, v in head_headers:
                    lines += [k, b": ", v, b"\r\n"]
                if not more and not has_length:
                    lines += [b"content-length: ", str(len(chunk)).encode(), b"\r\n"]
                elif more and not has_length:
                    state["chunked"] = True
                    lines.append(b"transfer-encoding: chunked\r\n")
                if not keep_alive:
                    lines.append(b"connection: close\r\n")
                lines.append(b"\r\n")
                state["started"] = True
                if state["chunked"]:
                    transport.write(b"".join(lines) + (b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunk else b""))
                else:
                    transport.write(b"".join(lines) + chunk)
            elif state["chunked"]:
                if chunk:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            elif chunk:
                transport.write(chunk)
            if not more:
                if state["chunked"]:
                    transport.write(b"0\r\n\r\n")
                sent_body = True

        try:
            await self.app(scope, receive, send)
        except ConnectionResetError:  # the client went away while the answer was being sent
            keep_alive = False
        except Exception:  # the app failed: 500 if nothing was sent, else the connection is cut
            log.exception("the app failed on %s %s", method, path)
            if not state["started"]:
                msg = b'{"error": "internal error in the gateway"}'
                transport.write(_status_line(500) + b"content-type: application/json\r\ncontent-length: "
                                + str(len(msg)).encode() + b"\r\n\r\n" + msg)
                sent_body = True
            else:
                keep_alive = False
        if not sent_body or not keep_alive:
            transport.close()
            self.closing = True


class Server:
    def __init__(self, app: Any, host: str, port: int):
        self.app, self.address = app, (host, port)
        self.connections: set[_Connection] = set()

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()

        def stopping() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping)
        lifespan = _Lifespan(self.app)
        await lifespan.startup()
        server = await loop.create_server(lambda: _Connection(self.app, self), *self.address, backlog=2048)
        if on_ready is not None:
            on_ready(f"http://{self.address[0]}:{self.address[1]}")
        try:
            await stop
        finally:
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await lifespan.shutdown()


class _Lifespan:
    """The ASGI lifespan protocol, run beside the server."""

    def __init__(self, app: Any):
        self.app = app
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        await self.outbox.get()

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self.outbox.get(), 10)
        except asyncio.TimeoutError:
            pass


def run(app: Any, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `app` until SIGINT or SIGTERM (uvloop when it is installed)."""
    import gc

    gc.collect()
    gc.freeze()  # what is loaded now lives as long as the server: keep it out of full collections
    try:
        from uvloop import run as runner
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]
    runner(Server(app, host, port).serve(on_ready))
