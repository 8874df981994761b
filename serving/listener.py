"""Listening for the lean HTTP server's connections (serving/fastserver.py): `Server` accepts them on an
address and counts what they hold (connections, request body bytes), runs the app's ASGI lifespan beside
them, and stops on SIGINT or SIGTERM; `run` serves an app so until then.

Stopping drains, as a pod being replaced must (Kubernetes sends SIGTERM, then SIGKILL after the grace
period): no new connection is taken, and the requests and streams in flight are answered to their end
(each with `connection: close`) for up to `drain_seconds`; only then is what is left cut. A kept-alive
connection that waits for a request is closed once it has waited DRAIN_IDLE_SECONDS: a client that calls
more often gets its next answer with `connection: close` instead, since closing a connection the moment
its client sends on it loses that request (HAProxy's idle-close-on-response, for the same reason). An app
with a `stopping` attribute is told (the gateway's readiness then says 503)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Callable

from mlyard.serving.fastserver import Connection, Limits

DRAIN_IDLE_SECONDS = 2.0


class Server:
    def __init__(self, app: Any, host: str, port: int, limits: Limits | None = None, drain_seconds: float = 25.0):
        self.app, self.address, self.limits = app, (host, port), limits or Limits()
        self.connections: set[Connection] = set()
        self.held = 0  # request body bytes its connections hold now (Limits.max_body_bytes_in_flight)
        self.drain_seconds, self.draining = drain_seconds, False

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
        server = await loop.create_server(lambda: Connection(self.app, self), *self.address, backlog=2048)
        if on_ready is not None:
            on_ready(f"http://{self.address[0]}:{self.address[1]}")
        try:
            await stop
            await self._drain(server)
        finally:
            server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await lifespan.shutdown()

    async def _drain(self, server: asyncio.AbstractServer) -> None:
        """No new connections; those answering left to finish and those long idle closed, for drain_seconds."""
        self.draining = True
        if hasattr(self.app, "stopping"):
            self.app.stopping = True
        server.close()  # the listening socket: a new connection is refused (a client tries another replica)
        deadline = time.monotonic() + self.drain_seconds
        while self.connections and time.monotonic() < deadline:
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.idle_for(now) >= DRAIN_IDLE_SECONDS and conn.transport is not None:
                    conn.transport.close()  # its client opens a new connection, to another replica
            await asyncio.sleep(0.05)


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


def run(app: Any, host: str, port: int, on_ready: Callable[[str], None] | None = None,
        limits: Limits | None = None, drain_seconds: float = 25.0) -> None:
    """Serve `app` until SIGINT or SIGTERM, then drain for up to `drain_seconds` (uvloop when it is installed)."""
    import gc

    gc.collect()
    gc.freeze()  # what is loaded now lives as long as the server: keep it out of full collections
    try:
        from uvloop import run as runner
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]
    runner(Server(app, host, port, limits, drain_seconds).serve(on_ready))
