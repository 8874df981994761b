"""Listening for the lean HTTP server's connections (serving/fastserver.py): `Server` accepts them on an
address and counts what they hold (connections, request body bytes), runs the app's ASGI lifespan beside
them, and stops on SIGINT or SIGTERM; `run` serves an app so until then."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Callable

from mlyard.serving.fastserver import Connection, Limits


class Server:
    def __init__(self, app: Any, host: str, port: int, limits: Limits | None = None):
        self.app, self.address, self.limits = app, (host, port), limits or Limits()
        self.connections: set[Connection] = set()
        self.held = 0  # request body bytes its connections hold now (Limits.max_body_bytes_in_flight)

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


def run(app: Any, host: str, port: int, on_ready: Callable[[str], None] | None = None,
        limits: Limits | None = None) -> None:
    """Serve `app` until SIGINT or SIGTERM (uvloop when it is installed)."""
    import gc

    gc.collect()
    gc.freeze()  # what is loaded now lives as long as the server: keep it out of full collections
    try:
        from uvloop import run as runner
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]
    runner(Server(app, host, port, limits).serve(on_ready))
