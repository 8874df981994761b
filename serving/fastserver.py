"""A lean HTTP/1.1 server for an ASGI app whose requests are small: the gateway's front side.

uvicorn spends about 100 µs of CPU per request here on its general machinery (a task and a cycle
object per request, checks on every message, one socket write per message), which is most of the
gateway's budget. This server parses with httptools (as uvicorn does), buffers each request body
(the app refuses large ones itself), hands the app one `http.request` message, and writes a response
whose body comes in one message as a single write with its Content-Length. A streamed response
(server-sent events) goes out chunk by chunk as it comes, with chunked transfer encoding unless the
app gave a length. Keep-alive, pipelined requests (answered in order), and `Connection: close` are
honoured; a malformed request gets 400 and the connection is closed.

It holds under abuse (Limits): the request line and headers are bounded (431), and so is the body
(413, as soon as it passes the limit, not after reading it all); an app that has `admit(method, path,
headers)` judges a request on its head alone (the gateway checks the route and the token there), and
a refused request is answered at once without its body ever being read; a connection must send its
head and body in time (408), is closed after a keep-alive pause, and there are at most
`max_connections` at once (503 to the next).

It listens through serving/listener.py (`Server`, `run`). Not here, on purpose: TLS, WebSockets, HTTP/2, `Expect: 100-continue` beyond answering it, trailers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable

import httptools

log = logging.getLogger("mlyard.fastserver")
MAX_BODY = 64 * 1024 * 1024
LINGER_SECONDS = 2.0
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 64 * 1024  # the request line and headers (431 above)
    max_body_bytes: int = MAX_BODY  # unless the app's admit() gives a request its own limit (413 above)
    head_seconds: float = 10.0  # from a request's first byte to the end of its headers (408 after)
    body_seconds: float = 60.0  # from the end of the headers to the end of the body (408 after)
    idle_seconds: float = 5.0  # a kept-alive connection with no request (closed after), as uvicorn does
    max_connections: int = 4096  # open at once (503 to the next)
    # request bodies held at once, all connections together (503 with Retry-After to a request that would pass
    # it): sixteen 30 MiB bodies, each under the limit, took the gateway from 68 to 983 MB
    max_body_bytes_in_flight: int = 256 * 1024 * 1024


Refusal = tuple[int, bytes, list]  # status, JSON body, extra headers


def _closing_reply(status: int, body: bytes, headers: list | tuple = ()) -> bytes:
    head = [_status_line(status), b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
            b"\r\nconnection: close\r\n"]
    for k, v in headers:
        head += [k, b": ", v, b"\r\n"]
    return b"".join(head) + b"\r\n" + body


class Connection(asyncio.Protocol):
    def __init__(self, app: Any, server: Any):  # serving/listener.py's Server
        self.app, self.server, self.limits = app, server, server.limits
        self.admit: Callable[[str, str, list], Refusal | int | None] | None = getattr(app, "admit", None)
        self.refused: Callable[[int], None] | None = getattr(app, "refused", None)  # told of each refusal's status
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple] = deque()
        self.busy = False
        self.closing = False
        self._upgraded = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._limit = self.limits.max_body_bytes
        self._in_body = False  # between the end of a request's headers and the end of its body
        self._head_bytes = 0  # bytes received while a request's head was incomplete
        self._refused: Refusal | None = None  # this request is answered with it; its body is not kept
        self._holding = 0  # body bytes of the request being received, taken from the server's budget
        self._held: deque[int] = deque()  # those of each request received and not yet answered
        self._timer: asyncio.TimerHandle | None = None
        self.client: tuple[str, int] | None = None
        self._receiving = False  # a request's head or body is arriving
        self.idle_since = time.monotonic()  # when it last had nothing to answer or receive

    # asyncio.Protocol
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        if len(self.server.connections) >= self.limits.max_connections:
            self.closing = True
            transport.write(_closing_reply(503, b'{"error": "the gateway has too many connections open; retry '
                                                b'shortly"}', [(b"retry-after", b"1")]))
            transport.close()
            return
        self.server.connections.add(self)
        self._arm(self.limits.idle_seconds, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._arm(None, None)
        self.server.connections.discard(self)
        self.server.held -= self._holding + sum(self._held)  # what it held, given back
        self._holding = 0
        self._held.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing or self._upgraded:  # a refused request's body (lingering, see _close_with), a closed
            return  # connection's, or what follows a request that offered another protocol
        if not self._in_body:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # a request asking to switch protocols (`Upgrade: h2c`, curl --http2) is answered over HTTP/1.1, as
            # RFC 9110 lets a server ignore the offer; the parser reads nothing after it, so that answer is
            # the connection's last (what the client sends meanwhile is dropped)
            self._upgraded = True
            if self.pending:
                method, path, query, headers, body, _, refused = self.pending.pop()
                self.pending.append((method, path, query, headers, body, False, refused))
            else:
                self._close_with(400, b'{"error": "malformed HTTP request: an upgrade before a whole request"}')
            return
        except httptools.HttpParserError as exc:
            self._close_with(400, f'{{"error": "malformed HTTP request: {type(exc).__name__}"}}'.encode())
            return
        if not self._in_body and self._head_bytes > self.limits.max_head_bytes and not self.closing:
            self._close_with(431, b'{"error": "the request line and headers are over the limit of %d bytes"}'
                             % self.limits.max_head_bytes)

    # the connection's clock: one timer, for the phase it is in
    def _arm(self, seconds: float | None, status: int | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if seconds is not None and not self.closing:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._late, status)

    def _late(self, status: int | None) -> None:
        self._timer = None
        if status is None or self.busy:  # idle, or an answer is being written: closed without a word
            self.closing = True
            if self.transport is not None:
                self.transport.close()
        else:
            self._close_with(status, b'{"error": "the request did not arrive in time"}')

    def _close_with(self, status: int, body: bytes, headers: list | tuple = ()) -> None:
        """Answer now and close (nothing is being answered on this connection). The close lingers: our side
        ends with the answer (FIN), and what the client still sends (the body we refused) is read and
        dropped for LINGER_SECONDS before the socket closes, so that its unread bytes do not turn the
        close into a reset that would lose the answer on the client's side (as nginx's lingering_close)."""
        self.closing = True
        self._arm(None, None)
        transport = self.transport
        if transport is None:
            return
        if self.busy:
            transport.close()
            return
        transport.write(_closing_reply(status, body, headers))
        _linger(transport)

    def _refuse(self, refusal: Refusal) -> None:
        """Refuse the request being received: at once when nothing is being answered (its body is never
        read), else after the answers before it (its body is dropped as it comes)."""
        if self.refused is not None:
            self.refused(refusal[0])
        if not self.busy and not self.pending:
            self._close_with(*refusal)
        else:
            self._refused = refusal

    # httptools callbacks
    def idle_for(self, now: float) -> float:
        """Seconds it has waited for a request with nothing in flight (0 while it receives or answers one)."""
        return 0.0 if self.busy or self.pending or self._receiving else now - self.idle_since

    def on_message_begin(self) -> None:
        self._receiving = True
        self._url, self._headers, self._body, self._size = b"", [], [], 0
        self._limit, self._refused = self.limits.max_body_bytes, None
        if not self.busy:
            self._arm(self.limits.head_seconds, 408)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_body = True
        if not self.busy:
            self._arm(self.limits.body_seconds, 408)
        verdict = None
        if self.admit is not None:
            try:
                verdict = self.admit(self.parser.get_method().decode("ascii"),
                                     httptools.parse_url(self._url).path.decode("latin-1"), self._headers)
            except Exception:  # a bad head the app could not judge: the app answers it as usual
                log.exception("admit failed")
        if isinstance(verdict, tuple):
            return self._refuse(verdict)
        if isinstance(verdict, int):
            self._limit = verdict
        declared = next((v for k, v in self._headers if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            return self._refuse(_too_large(self._limit))
        if declared is not None and declared.isdigit() and not self._room(int(declared)):
            return self._refuse(self._no_room())
        if self.transport is not None and (b"expect", b"100-continue") in self._headers:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._refused is not None or self.closing:
            return
        self._size += len(body)
        if self._size > self._limit:
            self._drop_body()
            self._refuse(_too_large(self._limit))
        elif not self._room(len(body)):
            self._drop_body()
            self._refuse(self._no_room())
        else:
            self.server.held += len(body)
            self._holding += len(body)
            self._body.append(body)

    def _room(self, size: int) -> bool:
        """Whether the server's budget of body bytes has `size` more (Limits.max_body_bytes_in_flight)."""
        return self.server.held + size <= self.limits.max_body_bytes_in_flight

    def _no_room(self) -> Refusal:
        mib = self.limits.max_body_bytes_in_flight >> 20
        return 503, (b'{"error": "the server holds %d MiB of request bodies at once, all callers together, and has no '
                     b'room now; retry shortly"}' % mib), [(b"retry-after", b"1")]

    def _drop_body(self) -> None:
        self._body = []
        self.server.held -= self._holding
        self._holding = 0

    def on_message_complete(self) -> None:
        self._in_body, self._head_bytes, self._receiving = False, 0, False
        if self.closing:
            return
        url = httptools.parse_url(self._url)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = (self.parser.get_method().decode("ascii"), url.path.decode("latin-1"), url.query or b"",
                   self._headers, body, self.parser.should_keep_alive(), self._refused)
        self._body = []
        self._held.append(self._holding)
        self._holding = 0
        self.pending.append(request)
        if not self.busy:
            self.busy = True
            self._arm(None, None)
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self.pending and not self.closing:
                try:
                    await self._one(*self.pending.popleft())
                finally:
                    if self._held:  # answered: its body's bytes go back (a lost connection gave them all back)
                        self.server.held -= self._held.popleft()
        finally:
            self.busy, self.idle_since = False, time.monotonic()
            if not self.closing:
                self._arm(self.limits.idle_seconds, None)

    async def _one(self, method: str, path: str, query: bytes, headers: list, body: bytes, keep_alive: bool,
                   refused: Refusal | None) -> None:
        transport = self.transport
        assert transport is not None
        keep_alive = keep_alive and not getattr(self.server, "draining", False)  # a stopping server: the last one
        if refused is not None:
            transport.write(_closing_reply(*refused))
            _linger(transport)
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


def _linger(transport: asyncio.Transport) -> None:
    """End our side after the answer (FIN), and close the socket LINGER_SECONDS later."""
    if transport.can_write_eof():
        transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
    else:
        transport.close()


def _too_large(limit: int) -> Refusal:
    return 413, b'{"error": "the request body is over the limit of %d bytes"}' % limit, []
