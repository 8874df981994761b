"""The front door's listener (mlyard/prefect_door.py's app under uvicorn), a thread of the mlyard API's
process (mlyard/service.py), and its drain when that process is told to stop.

The drain, as the gateway's (serving/listener.py): the pod's preStop has already let the Service take it out
of routing, so new connections go to other pods, but a browser keeps its kept-alive connections here. From
the drain on, every answer says `Connection: close` (the browser's next request opens a new connection, to
a pod that stays); after DRAIN_SECONDS the listener stops and what is still in flight is finished
(uvicorn's graceful shutdown) before the process ends, so no request is cut off."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable

log = logging.getLogger("mlyard.door")

DRAIN_SECONDS = 2.0  # answering with Connection: close before the listener stops
_draining = threading.Event()
_running: list[tuple[Any, threading.Event]] = []  # (the uvicorn server, set once it returned)


class Closing:
    """An ASGI app whose answers say `Connection: close` once the door drains."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def closing(message: dict) -> None:
            if message["type"] == "http.response.start" and _draining.is_set():
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing if scope["type"] == "http" else send)


def serve(host: str, port: int, internal: str | None) -> None:
    """Run the door (in a thread of the mlyard API's process: mlyard/service.py). A port already taken is
    logged, and the API goes on without its door."""
    import uvicorn
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    from mlyard import door_sign_in as door
    from mlyard.core.settings import Settings
    from mlyard.prefect_door import PrefectDoor

    api = PREFECT_API_URL.value()
    if not api or not internal:
        log.warning("no Prefect API or no internal credential: the front door to the Prefect UI stays closed")
        return
    trusted = Settings().door_trusted_proxy
    if trusted:  # the identity headers are believed: only the proxy beside it in its pod may reach it
        host = "127.0.0.1"
    app = PrefectDoor(api, PREFECT_API_AUTH_STRING.value(), door.session_secret(internal), trusted)
    config = uvicorn.Config(Closing(app), host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off", limit_concurrency=64, timeout_keep_alive=30,
                            h11_max_incomplete_event_size=32 * 1024, timeout_graceful_shutdown=25)
    server, done = uvicorn.Server(config), threading.Event()
    _running.append((server, done))
    try:
        server.run()
    except (OSError, SystemExit):
        log.exception("the front door to the Prefect UI could not listen on %s:%d", host, port)
    finally:
        done.set()


def drain(timeout: float = 25.0) -> None:
    """Let the door's browsers move to other pods, then stop it with nothing in flight (see the module)."""
    if not _running:
        return
    _draining.set()
    if any(server.server_state.connections for server, _ in _running):  # none open: nobody to move
        time.sleep(DRAIN_SECONDS)
    for server, _ in _running:
        server.should_exit = True
    for _, done in _running:
        done.wait(timeout)


def run_then_drain(run: Callable[[], None]) -> None:
    """`run()` (the API's own uvicorn, which takes SIGTERM while it runs), then the door's drain. Once uvicorn
    has shut down on a signal it raises it again for the handler it found: with the default one the process
    would end there, cutting the door off; this one holds it until the door has drained."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    drain()
