"""A shadow stage's copy of a request (serving/traffic.py decides which): sent after the client has its
answer, compared with that answer, counted for the shadow gate, and dropped."""

from __future__ import annotations

import asyncio
import time

from mlyard.serving.gateway_state import Shared
from mlyard.serving.proxy import UpstreamError
from mlyard.serving.routing import NoReplica, NoRoute, Route
from mlyard.serving.traffic import agree


async def shadow_request(gw: Shared, route: Route, method: str, target: str, headers: list, body: bytes,
                         answer: bytes | None, tolerance: float) -> None:
    """The same request to a shadow stage, after the client has its answer: compared, counted, dropped."""
    started = time.perf_counter()
    status, got = None, b""
    try:
        replica = gw.router.acquire(route)
    except (NoRoute, NoReplica):
        replica = None
    t = gw.replicas.get(replica.url) if replica is not None else None
    if t is not None:
        try:
            resp = await t.pool.request(method, target, headers + t.credential, body, timeout=gw.timeout)
            got = await resp.read()
            status = resp.status
            resp.close()
        except UpstreamError:
            pass
    if replica is not None:
        gw.router.release(replica)
    failed = status is None or status >= 500
    agreed = None if answer is None else (not failed and status is not None and status < 400
                                          and agree(answer, got, tolerance))
    gw.live.record_pair((route.endpoint, route.stage or ""), agreed, (time.perf_counter() - started) * 1000, failed)


def mirror(gw: Shared, route: Route, method: str, target: str, headers: list, body: bytes, answer: bytes | None,
           tolerance: float) -> None:
    """Send the shadow copy in the background, unless `max_mirrors` copies are already on their way (a
    shadow share then skips requests rather than queue them)."""
    if len(gw.mirrors) >= gw.max_mirrors:
        return
    task = asyncio.get_running_loop().create_task(shadow_request(gw, route, method, target, headers, body, answer,
                                                                 tolerance))
    gw.mirrors.add(task)
    task.add_done_callback(gw.mirrors.discard)
