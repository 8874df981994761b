"""The gateway's management routes (/mlyard/...): health for anyone; the routing table, a reload, the
statistics and the metrics for the platform alone (its internal credential as a bearer token), since
they name every endpoint and replica.

    GET  /mlyard/health     200 while the gateway runs (open to anyone, as is /mlyard/ready)
    GET  /mlyard/ready      200 once the routing table is read and until SIGTERM (503 with the reason)
    GET  /mlyard/routes     the routing table: default stages, replicas, health, outstanding requests, shares
    POST /mlyard/reload     read the catalog and the replicas now (the endpoint flows call it after a change)
    GET  /mlyard/stats      ?since=&until= (epoch seconds) &endpoint=&stage=&model=: the statistics
    GET  /mlyard/metrics    the same counts since this gateway started, for Prometheus to scrape
"""

from __future__ import annotations

import math
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

import orjson

from mlyard.serving import asgi
from mlyard.serving.access import error_body, is_internal, is_scrape
from mlyard.serving.gateway_state import Shared


async def admin(gw: Shared, refresh: Callable[[], Awaitable[None]], scope: dict, receive: asgi.Receive,
                send: asgi.Send, ready: bool = True) -> None:
    """A management route; `refresh()` reads the catalog and the replicas now (the gateway's); `ready`: not
    stopping."""
    path, method = scope["path"], scope["method"]
    if path == "/mlyard/health":
        return await asgi.reply(send, 200, orjson.dumps({"status": "ok", "in_flight": gw.in_flight}))
    if path == "/mlyard/ready":  # Kubernetes' readinessProbe: routes only to a gateway that knows the routes
        why = None if gw.loaded and ready else "draining" if not ready else "the routing table is not read yet"
        return await asgi.reply(send, 503 if why else 200, orjson.dumps({"ready": not why, "reason": why}))
    if path == "/mlyard/metrics" and method == "GET" and is_scrape(gw.internal, scope["headers"]):
        body = gw.stats.prometheus({"mlyard_gateway_in_flight": ("Requests this gateway is answering now.",
                                                                 gw.in_flight)}) + _answers(gw)
        return await asgi.reply(send, 200, body, content_type=b"text/plain; version=0.0.4; charset=utf-8")
    if not is_internal(gw.internal, scope["headers"]):
        return await asgi.reply(send, 401, error_body("the gateway's management routes need the platform's internal "
                                                      "credential"), headers=[(b"www-authenticate", b"Bearer")])
    if path == "/mlyard/routes" and method == "GET":
        return await asgi.reply(send, 200, orjson.dumps(routes(gw)))
    if path == "/mlyard/reload" and method == "POST":
        await asgi.read_body(receive, 1024)
        await refresh()
        return await asgi.reply(send, 200, orjson.dumps(routes(gw)))
    if path == "/mlyard/stats" and method == "GET":
        q = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        try:
            since = float(q.get("since", time.time() - 3600))
            until = float(q["until"]) if "until" in q else None
            if not all(math.isfinite(t) and 0 <= t < 2**40 for t in (since, until) if t is not None):
                raise ValueError
        except ValueError:
            return await asgi.reply(send, 400, error_body("since and until are epoch seconds (finite, at least 0)"))
        result = gw.stats.query(since, until, q.get("endpoint"), q.get("stage"), q.get("model"))
        return await asgi.reply(send, 200, orjson.dumps(result))
    return await asgi.reply(send, 404, error_body(f"no route {method} {path}"))


def _answers(gw: Shared) -> bytes:
    """`mlyard_gateway_answers_total` by status class, every answer this gateway gave (not only routed ones: a
    503 for a stopped stage or a full gateway, a 401, a 404 too): what the alert rules rate."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily

    class Answers:
        def collect(self):
            family = CounterMetricFamily("mlyard_gateway_answers", "Answers of this gateway by status class "
                                         "(2xx, 4xx, 5xx; 503 apart).", labels=["status"])
            for status, count in sorted(gw.answers.items()):
                family.add_metric([status], count)
            yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Answers())  # type: ignore[arg-type]
    return generate_latest(registry)


def routes(gw: Shared) -> dict[str, Any]:
    """The routing table as /mlyard/routes gives it: each replica's health, the draining, the shares."""
    table = gw.router.view()
    for ep in table.values():
        for replicas in ep["stages"].values():
            for r in replicas:
                t = gw.replicas.get(r["url"])
                if t is not None:
                    r.update(key=t.key, status=t.health.status, failures=t.health.failures,
                             reason=t.health.reason, ejected=t.ejected)
    for key in [k for k, t in gw.draining.items() if not t.active]:
        del gw.draining[key]
    for name, split in gw.splits.items():
        if name in table:
            table[name]["weights"] = {st: w for st, w, _ in split.weights}
            table[name]["shadows"] = {st: w for st, w, _ in split.shadows}
    return {"endpoints": table, "draining": {k: t.active for k, t in gw.draining.items()},
            "in_flight": gw.in_flight, "started_at": gw.started,
            "autoscaling": list(gw.scaling)}
