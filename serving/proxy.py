"""The gateway's upstream side: HTTP/1.1 keep-alive connections to replicas, a pool per replica.

A request is written in one piece; the response is parsed by httptools (the parser uvicorn uses) as
bytes arrive, its head handed over as soon as it is complete and its body passed on chunk by chunk,
so server-sent events stream through. A connection goes back to its pool when its response has been
read to the end and the replica keeps it alive.

Why not httpx or aiohttp: the gateway's budget is about 150 µs of CPU per request in all, and their
clients alone spend more than that (bench/gateway.py measures the hop). This module only ever talks
to mlyard's own replicas over loopback or a cluster network: no TLS, no redirects, no cookies, no
proxies, which is what keeps it small.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, AsyncIterator

import httptools

from mlyard.core.errors import UpstreamError

HOP_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                         b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length"})

CONNECT_TIMEOUT = 5.0  # seconds to resolve and connect
# The answer's length is passed on (its body goes through unchanged); the gateway's server adds its own
# date and server headers.
RESPONSE_HOP_HEADERS = (HOP_HEADERS - {b"content-length"}) | {b"date", b"server"}




class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "parser", "head", "chunks", "wake", "done", "lost", "error", "status", "headers",
                 "keep_alive", "no_body")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost: Exception | None = None
        self._reset()

    def _reset(self) -> None:
        loop = asyncio.get_running_loop()
        self.head: asyncio.Future = loop.create_future()
        self.chunks: list[bytes] = []
        self.wake: asyncio.Future | None = None
        self.done = False
        self.error: UpstreamError | None = None
        self.status = 0
        self.keep_alive = False
        self.no_body = False  # the answer to a HEAD: its Content-Length describes a body that never comes
        self.headers: list[tuple[bytes, bytes]] = []

    # asyncio.Protocol
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the replica sent a malformed response: {exc}", sent=True))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("closed by the replica")
        if not self.done:
            self._fail(UpstreamError(f"the replica closed the connection: {self.lost}", sent=True))

    def _fail(self, error: UpstreamError) -> None:
        self.error, self.done = error, True
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # an idle connection has no one waiting: no "never retrieved" warning
        elif self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.no_body:  # the parser would wait for the body the length announces: the answer is complete,
            self.done, self.keep_alive = True, False  # and the connection (its parser mid-message) is not reused
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def on_message_complete(self) -> None:
        self.done = True
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


def _late(conn: _Conn, timeout: float) -> None:
    """The head of the answer did not come in time: the connection is given up."""
    conn._fail(UpstreamError(f"the replica did not answer within {timeout:.0f} s", sent=True, timeout=True))
    if conn.transport is not None:
        conn.transport.close()


class Response:
    """A replica's answer: `status`, `headers` (lower-case names, hop-by-hop ones removed), and the
    body through `body()`; `close()` returns the connection to its pool (or drops it)."""

    __slots__ = ("status", "headers", "_conn", "_pool")

    def __init__(self, conn: _Conn, pool: "Pool"):
        self._conn, self._pool = conn, pool
        self.status = conn.status
        self.headers = [(k, v) for k, v in conn.headers if k not in RESPONSE_HOP_HEADERS]

    async def body(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.chunks:
                chunks, conn.chunks = conn.chunks, []
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if conn.error is not None:
                raise conn.error
            if conn.done:
                return
            conn.wake = asyncio.get_running_loop().create_future()
            await conn.wake
            conn.wake = None

    def complete(self) -> bytes | None:
        """The whole body when it has already arrived (the usual case for a small answer), else None."""
        conn = self._conn
        if conn.done and conn.error is None:
            chunks, conn.chunks = conn.chunks, []
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return None

    async def read(self) -> bytes:
        parts = [c async for c in self.body()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            self._pool.put(conn)


class Pool:
    """Idle keep-alive connections to one replica."""

    def __init__(self, host: str, port: int, max_idle: int = 64):
        self.host, self.port, self.max_idle = host, port, max_idle
        self._idle: deque[_Conn] = deque()
        self._host_header = f"{host}:{port}".encode()

    def put(self, conn: _Conn) -> None:
        if (conn.done and conn.error is None and conn.lost is None and conn.keep_alive and conn.transport is not None
                and not conn.transport.is_closing() and len(self._idle) < self.max_idle):
            conn._reset()
            conn.parser = httptools.HttpResponseParser(conn)
            self._idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def close(self) -> None:
        while self._idle:
            conn = self._idle.popleft()
            if conn.transport is not None:
                conn.transport.close()

    async def _conn(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.lost is None and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        return (await self._connect(_Conn))[1], False

    async def reachable(self) -> None:
        """A new connection opened and closed, as Kubernetes' tcpSocket probe checks a container: what a
        replica with no health path is probed by (UpstreamError when it refuses)."""
        transport, _ = await self._connect(asyncio.Protocol)
        transport.close()

    async def _connect(self, protocol: Any) -> tuple[asyncio.BaseTransport, Any]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.create_connection(protocol, self.host, self.port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else exc.strerror or exc
            raise UpstreamError(f"cannot connect to the replica at {self.host}:{self.port}: {why}", sent=False) from None

    async def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
                      timeout: float | None = None) -> Response:
        """Send one request and wait for the response's head (at most `timeout` seconds)."""
        head = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), b"host: ", self._host_header,
                b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        for k, v in headers:
            if k not in HOP_HEADERS:
                head += [k, b": ", v, b"\r\n"]
        head.append(b"\r\n")
        payload = b"".join(head) + body
        for attempt in (0, 1):
            conn, reused = await self._conn()
            assert conn.transport is not None
            conn.no_body = method == "HEAD"
            conn.transport.write(payload)
            timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, _late, conn, timeout)
            try:
                await conn.head
            except UpstreamError as exc:
                conn.transport.close()
                no_answer = not exc.timeout and not conn.chunks and conn.status == 0
                if reused and attempt == 0 and no_answer:
                    # An idle connection the replica had closed (it restarted, or was killed): the others
                    # are as stale, so all go, and the request goes once more on a new connection.
                    self.close()
                    continue
                raise UpstreamError(str(exc), sent=not no_answer, timeout=exc.timeout) from None
            finally:
                if timer is not None:
                    timer.cancel()
            return Response(conn, self)
        raise AssertionError("unreachable")
