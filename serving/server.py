"""Run a model server with uvicorn (uvloop and httptools, one process, no access log: the hot path stays
short). A model given as `Pending` loads after the socket listens: until it is loaded (or compiled), the
server answers that it is not ready (503) instead of refusing connections."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlyard.serving.app import ModelServer
from mlyard.serving.loading import load
from mlyard.serving.runtime import ServedModel


def build(path: Path | str, name: str | None = None, version: str = "1", **options) -> ModelServer:
    return ModelServer([load(path, name, version)], **options)


@dataclass
class Pending:
    """A model to load once the server listens: its name and version, and what loads it."""

    name: str
    version: str
    load: Callable[[], ServedModel]


def run(models: list[ServedModel], host: str = "127.0.0.1", port: int = 8080,
        on_ready: Callable[[str], None] | None = None, pending: Pending | None = None, **options) -> None:
    """Serve `models` (and `pending`, loaded in the background) until SIGINT/SIGTERM; `on_ready(url)`
    once the socket listens and every model is loaded. A model that fails to load stops the server with
    its error (raised here)."""
    app = ModelServer(models, loading={pending.name: pending.version} if pending else None, **options)
    if pending is None:
        return run_app(app, host, port, on_ready)

    def load() -> Callable[[], None]:
        model = pending.load()
        return lambda: app.add(model)

    run_app(app, host, port, on_ready, then=load)


def run_app(app, host: str, port: int, on_ready: Callable[[str], None] | None = None, lifespan: bool = False,
            then: Callable[[], Callable[[], Any]] | None = None) -> None:
    """Serve an ASGI app until SIGINT/SIGTERM; `on_ready(url)` once the socket listens (and `then`, work
    done in a thread once it listens, has finished: what it returns is called on the event loop). A
    failure of `then` stops the server and is raised here. A replica that the platform started
    (MLYARD_REPLICA_TOKEN set) answers the gateway only (serving/access.py)."""
    import uvicorn

    from mlyard.core.settings import Settings
    from mlyard.serving.access import ReplicaGuard

    token = Settings().replica_token
    if token is not None:
        app = ReplicaGuard(app, token.get_secret_value())

    # What is loaded now (the model, scikit-learn, numpy) lives as long as the server: keep it out of
    # the garbage collector's full passes, which otherwise walk it all on a busy server (tail latency).
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app, host=host, port=port, interface="asgi3", log_level="warning", access_log=False, lifespan="on" if lifespan else "off",
        limit_concurrency=2048, timeout_keep_alive=5,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11")
    server = uvicorn.Server(config)
    failed: list[BaseException] = []
    _announce(server, f"http://{host}:{port}", on_ready or (lambda url: None), then, failed)
    server.run()
    if failed:
        raise failed[0]


def _announce(server, url: str, on_ready: Callable[[str], None], then: Callable[[], Callable[[], Any]] | None,
              failed: list[BaseException]) -> None:
    """Call `on_ready(url)` once the socket listens and `then` (in a daemon thread: a stop never waits for
    a load) has finished; a failure of `then` goes to `failed` and stops the server."""
    startup = server.startup

    async def started(sockets=None):
        await startup(sockets=sockets)
        if not server.started:
            return
        if then is None:
            return on_ready(url)
        loop = asyncio.get_running_loop()

        def done(result: Callable[[], Any] | None, error: BaseException | None) -> None:
            if error is not None:
                failed.append(error)
                server.should_exit = True
                return
            assert result is not None
            result()
            gc.collect()
            gc.freeze()  # what was just loaded lives as long as the server (see run_app)
            on_ready(url)

        def work() -> None:
            try:
                outcome: tuple[Any, BaseException | None] = (then(), None)
            except BaseException as exc:  # noqa: BLE001 - raised again by run_app on the main thread
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(done, *outcome)
            except RuntimeError:  # the server stopped (SIGTERM) while the model loaded: nothing to serve
                pass

        threading.Thread(target=work, name="mlyard-load", daemon=True).start()

    server.startup = started
