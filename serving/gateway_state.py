"""What the gateway (serving/gateway.py) shares with its side modules, as one object of its own: the
management routes (gateway_admin.py), the RAG routes (gateway_rag.py), the shadow copies
(gateway_shadow.py) and the autoscaler (scaler.py) read and change this, and nothing of the Gateway.

    shared = Shared(home, EndpointStats(...), timeout=120.0, max_body=32 * 2**20, internal=b"Bearer ...")
    shared.router.acquire(route); shared.replicas[url].active += 1
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlyard.serving.endpoint_stats import EndpointStats
from mlyard.serving.health import Health
from mlyard.serving.proxy import Pool
from mlyard.serving.ratelimit import Buckets
from mlyard.serving.routing import Router
from mlyard.serving.traffic import LiveCounts, Split


@dataclass
class Tracked:
    """A replica as the gateway routes it: its health, connections and request counters."""

    key: str
    url: str
    health: Health
    pool: Pool
    path: str | None  # None: an engine of no health check, healthy while it takes connections
    credential: list = field(default_factory=list)  # the replica header it checks (its own, where it runs user code)
    ejected: bool = False  # taken out after a failed connection, until a probe passes
    requests: int = 0  # requests sent to it (the autoscaler's requests_per_second)
    active: int = 0  # requests in flight on it


@dataclass
class Shared:
    """The gateway's routing state: the table it routes by, the replicas it tracks, what it counts."""

    home: Path
    stats: EndpointStats
    timeout: float  # seconds a replica has to answer
    max_body: int  # bytes of a request body, unless its endpoint says otherwise
    # what the management routes take, and what the platform's own services pass endpoints with
    internal: bytes | None = None  # b"Bearer " + the internal token
    router: Router = field(default_factory=Router)
    replicas: dict[str, Tracked] = field(default_factory=dict)  # url -> its health and connections
    loaded: bool = False  # the routing table read once: until then no endpoint is known to be unknown (nor ready)
    draining: dict[str, Tracked] = field(default_factory=dict)  # key -> out of routing, requests still on it
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # the catalog's routing view
    splits: dict[str, Split] = field(default_factory=dict)  # per endpoint whose stages share its default traffic
    live: LiveCounts = field(default_factory=LiveCounts)  # running totals for promotions' gates
    scaling: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))  # the autoscaler's decisions
    mirrors: set[asyncio.Task] = field(default_factory=set)  # shadow copies on their way
    max_mirrors: int = 64  # shadow copies in flight at most; beyond, a shadow share skips requests
    in_flight: int = 0
    started: float = field(default_factory=time.time)
    # the catalog's view of users' API keys, their projects and the projects' rate limits (registry/teams.py)
    members: dict[str, Any] = field(default_factory=lambda: {"keys": {}, "users": {}, "limits": {}})
    buckets: Buckets = field(default_factory=Buckets)  # requests a second, by project and by caller
    answers: dict[str, int] = field(default_factory=dict)  # answers by status class ("2xx", "5xx"; "503" apart)

    def count(self, status: int) -> None:
        """An answer of `status` given (`answers`), by the app or refused on its head by fastserver."""
        key = "503" if status == 503 else f"{status // 100}xx"
        self.answers[key] = self.answers.get(key, 0) + 1

    def counted(self, send: Any) -> Any:
        """`send`, counting the status of the answer it starts."""
        async def counting(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.count(message["status"])
            await send(message)
        return counting


async def probed_status(t: Tracked, timeout: float) -> int:
    """The status a replica's health path answers (200 for one with none that takes a connection: through a
    Service, one that has a ready endpoint kube-proxy knows of); UpstreamError when none."""
    if t.path is None:
        await t.pool.reachable()
        return 200
    resp = await t.pool.request("GET", t.path, t.credential, b"", timeout=timeout)
    await resp.read()
    resp.close()
    return resp.status
