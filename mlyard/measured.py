"""Requests counted and timed for Prometheus, as an ASGI middleware: the mlyard API's (mlyard/service.py)
and MLflow's tracking server on the cluster (mlyard/mlflow_server.py)."""

from __future__ import annotations

import time
from typing import Any, Callable


def router_route(scope: dict) -> str:
    """The template of the route a Starlette or FastAPI router matched ("other" when none did)."""
    return getattr(scope.get("route"), "path", "other")


class Measured:
    """ASGI middleware: each answered request counted as `<prefix>_requests_total` by its route's template
    (never the path a caller made up: a label per made-up path would grow the metrics without bound) and
    status, and timed as `<prefix>_request_seconds`. `route(scope)` names the template once the request was
    answered; `registry` None keeps the metrics out of any registry (prometheus_client's multiprocess mode
    reads them from its folder)."""

    def __init__(self, app: Any, registry: Any, prefix: str, server: str,
                 route: Callable[[dict], str] = router_route):
        from prometheus_client import Counter, Histogram

        self.app, self.route = app, route
        self.requests = Counter(f"{prefix}_requests", f"Requests {server} answered, by route and status.",
                                ["route", "status"], registry=registry)
        self.seconds = Histogram(f"{prefix}_request_seconds", f"Seconds {server} took to answer, by route.",
                                 ["route"], registry=registry)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, start = [500], time.perf_counter()

        async def seen(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, seen)
        finally:
            route = self.route(scope)
            self.requests.labels(route, str(status[0])).inc()
            self.seconds.labels(route).observe(time.perf_counter() - start)
