"""Run a model server: load the models, then serve them with uvicorn (uvloop and httptools, one
process, no access log: the hot path stays short)."""

from __future__ import annotations

import gc
import importlib.util
from pathlib import Path
from typing import Callable

from serving.app import ModelServer
from serving.runtime import ServedModel, load


def build(path: Path | str, name: str | None = None, version: str = "1", **options) -> ModelServer:
    return ModelServer([load(path, name, version)], **options)


def run(models: list[ServedModel], host: str = "127.0.0.1", port: int = 8080,
        on_ready: Callable[[str], None] | None = None, **options) -> None:
    run_app(ModelServer(models, **options), host, port, on_ready)


def run_app(app, host: str, port: int, on_ready: Callable[[str], None] | None = None, lifespan: bool = False) -> None:
    """Serve an ASGI app until SIGINT/SIGTERM; `on_ready(url)` once the socket listens. A replica that
    the platform started (MLYARD_REPLICA_TOKEN set) answers the gateway only (serving/access.py)."""
    import uvicorn

    from core.settings import Settings
    from serving.access import ReplicaGuard

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
    if on_ready is not None:
        _announce(server, f"http://{host}:{port}", on_ready)
    server.run()


def _announce(server, url: str, on_ready: Callable[[str], None]) -> None:
    """Call `on_ready(url)` once the socket listens."""
    startup = server.startup

    async def started(sockets=None):
        await startup(sockets=sockets)
        if server.started:
            on_ready(url)

    server.startup = started
