"""The endpoint gateway that `mlyard up` starts (`python -m mlyard.serving.gateway_main`), before every endpoint's replicas.

    /{endpoint}/{model}/v1|v2|openai/...                 the endpoint's default stage
    /{endpoint}/stages/{stage}/{model}/v1|v2|openai/...  one stage
    /mlyard/health, ready, routes, reload, stats, metrics: gateway_admin.py (internal credential but the first two)
    POST /rag/v1/query, /rag/v1/search: the RAG the body's `model` names (gateway_rag.py)

Per request: parse the route (404 when nothing answers; 503 before the table's first read); check the token
unless the endpoint is public (401) and the declared size against the endpoint's limit (413), on the head,
before the body is read (`admit`; fastserver.py's Limits bound headers, bodies, time and connections); take the
healthy replica with the fewest outstanding requests (503 + Retry-After when none or when full); proxy the
request, streaming the answer. A replica that refuses the connection or closes it unanswered leaves routing at
once and another takes it, until a health probe passes; replicas get their credential (serving/access.py).

Every second (on /mlyard/reload; when a request finds no route or healthy replica) it reads the catalog and
the replica files (tasks/replicas.py), probes replicas as Backend.AI's health checks do, counts answers by status.

Stages can share an endpoint's default traffic (serving/traffic.py): a default-URL request goes to the stage the
shares pick, and again to a shadow stage after the client has its answer (gateway_shadow.py); running totals go
to the catalog every second for promotions' gates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from mlyard.core.connection import REPLICA_HEADER, replica_key_token, replica_token
from mlyard.serving import asgi, chat_page, stats_journal
from mlyard.serving.access import (
    CALLER_HEADER,
    RETRY_AFTER,
    caller_of,
    error_body,
    may_manage,
    over_budget,
    over_limit,
    route_error,
    token_problem,
    unknown_endpoint,
)
from mlyard.serving.endpoint_stats import EndpointStats
from mlyard.serving.fastserver import Refusal
from mlyard.serving.gateway_admin import admin
from mlyard.serving.gateway_rag import RAG_ROUTES, rag
from mlyard.serving.gateway_rag import admit as admit_rag
from mlyard.serving.gateway_relay import Taken, relay
from mlyard.serving.gateway_shadow import mirror
from mlyard.serving.gateway_state import Shared, Tracked, probed_status
from mlyard.serving.health import HEALTHY, Health
from mlyard.serving.modelfolder import HealthCheck
from mlyard.serving.proxy import Pool, UpstreamError
from mlyard.serving.routing import NoReplica, NoRoute, Replica, Route, parse
from mlyard.serving.scaler import Autoscaler
from mlyard.serving.traffic import Split, shared_out
from mlyard.tasks import replicas as files

log = logging.getLogger("mlyard.gateway")
MAX_BODY = 32 * 1024 * 1024  # as `mlyard serve`'s replicas (Settings.max_request_bytes)
RECHECK_SECONDS = 0.25


class Gateway:
    def __init__(self, home: Path, catalog_url: str | None, check: HealthCheck | None = None,
                 max_in_flight: int = 1024, timeout: float = 120.0, refresh_seconds: float = 1.0,
                 autoscale_seconds: float = 5.0, internal_token: str | None = None, max_body: int = MAX_BODY,
                 replica: str | None = None):
        # the platform's own services (a RAG's query service asking its LLM) pass with it; the management routes too
        internal = b"Bearer " + internal_token.encode() if internal_token else None
        # what replicas check (serving/access.py): given (on Kubernetes, the Secret's mlyard_replica_token),
        # else derived from the internal credential, as `mlyard up` gives its replicas
        replica = replica or (replica_token(internal_token) if internal_token else None)
        self._replicas_token = replica
        home = Path(home)
        # the routing state the side modules share (serving/gateway_state.py); fastserver's refusals are counted too
        self.shared = Shared(home, EndpointStats(home / "endpoints" / "stats", catalog_url), timeout, max_body, internal)
        self.refused = self.shared.count
        self.catalog_url = catalog_url
        self.check = check or HealthCheck(path="/v2/health/ready", interval=1.0, max_retries=2, max_wait_time=2.0, expected_status_code=200,
                                          initial_delay=0.0)
        self.max_in_flight, self.refresh_seconds = max_in_flight, refresh_seconds
        self._rechecked = float("-inf")  # when a request that found no healthy replica last had the table read
        self.stopping = False  # SIGTERM came: draining (serving/listener.py), no longer ready
        self._endpoints_api: Any = None
        self._members: dict[str, Any] | None = None
        self._routes: dict[str, Any] = {}
        self.autoscale_seconds = autoscale_seconds
        self.scaling = Autoscaler(self.shared)
        self._tasks: list[asyncio.Task] = []
        self._refresh_lock: asyncio.Lock | None = None
        self.gateway_id = f"{socket.gethostname()}-{os.getpid()}-{int(self.shared.started)}"
        self.journal = home / "endpoints" / "stats" / "live" / f"{self.gateway_id}.json"

    def _read(self) -> tuple[dict[str, dict[str, Any]], list[files.Wanted], dict[str, files.State]]:
        if self._endpoints_api is None and self.catalog_url:
            from mlyard.registry.catalog import Catalog
            from mlyard.registry.endpoints import Endpoints

            self._endpoints_api = Endpoints(Catalog(self.catalog_url))
        endpoints = self._endpoints_api.routing() if self._endpoints_api is not None else {}
        if self._endpoints_api is not None:
            from mlyard.registry.rags import Rags
            from mlyard.registry.teams import Teams

            endpoints.update(Rags(self._endpoints_api.catalog).routing(endpoints))
            self._members = Teams(self._endpoints_api.catalog).gateway_view()
        return endpoints, files.wanted(self.shared.home) + files.on_cluster(endpoints), files.states(self.shared.home)

    def _credential(self, w: files.Wanted) -> list[tuple[bytes, bytes]]:
        """The replica header a replica checks: the replicas' credential, or, for one that runs a user's code
        on this machine, its own (derived from that credential and its key), which opens no other replica."""
        if not self._replicas_token:
            return []
        value = replica_key_token(self._replicas_token, w.key) if w.walled and not w.url else self._replicas_token
        return [(REPLICA_HEADER, value.encode())]

    async def refresh(self) -> None:
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            endpoints, wanted, states = await asyncio.get_running_loop().run_in_executor(None, self._read)
            groups: dict[tuple[str, str], list[tuple[files.Wanted, str]]] = {}
            for w in wanted:
                url = w.url or (states[w.key].url if w.key in states else None)
                if w.routed and url is not None and w.endpoint in endpoints:
                    groups.setdefault((w.endpoint, w.stage), []).append((w, url))
            seen = {url for members in groups.values() for _, url in members}
            new = [(w, url) for members in groups.values() for w, url in members if url not in self.shared.replicas]
            for w, url in (m for members in groups.values() for m in members if m[1] in self.shared.replicas):
                self.shared.replicas[url].credential = self._credential(w)  # its key's (a replica started again)
            for w, url in new:
                host, port = url.rsplit("//", 1)[1].rstrip("/").rsplit(":", 1)  # replica URLs carry their port
                self.shared.replicas[url] = Tracked(w.key, url, Health(self.check, time.monotonic()), Pool(host, int(port)),
                                                   w.health_path, credential=self._credential(w))
            # A replica put into routing was found healthy by its flow: probe it once before it takes requests.
            await asyncio.gather(*(self._probe(self.shared.replicas[url]) for _, url in new))
            for url in set(self.shared.replicas) - seen:
                gone = self.shared.replicas.pop(url)
                gone.pool.close()
                if gone.active:  # its answers are still coming: a flow that stops it waits for them (drain)
                    self.shared.draining[gone.key] = gone
            self.shared.endpoints, self.shared.loaded = endpoints, True
            if self._members is not None:
                self.shared.members = self._members
            for (endpoint, stage), members in groups.items():
                self.shared.router.set_stage(endpoint, stage, [Replica(url, w.model, healthy=self._routable(url))
                                                        for w, url in members])
            for endpoint, stage in self.shared.router.stages():
                if (endpoint, stage) not in groups:
                    self.shared.router.remove_stage(endpoint, stage)
            for name, ep in endpoints.items():
                self.shared.router.set_default(name, ep["default"])
            models: dict[tuple[str, str], set[str]] = {k: {w.model for w, _ in members} for k, members in groups.items()}
            self.shared.splits = {name: split for name, ep in endpoints.items()
                           if (split := Split.of(ep["stages"], {st: models.get((name, st), set()) for st in ep["stages"]},
                                                 ep.get("shadow_tolerance"))) is not None}
            for name in set(self.shared.router.view()) - set(endpoints):  # deleted endpoints
                self.shared.router.set_default(name, None)

    async def _recheck(self) -> bool:
        """A request found no route or healthy replica, but a flow may have routed one since the last pass (a
        deploy): read the table and probe what is not routable now; at most once every RECHECK_SECONDS."""
        now = time.monotonic()
        if now - self._rechecked < RECHECK_SECONDS:
            return False
        self._rechecked = now
        await self.refresh()
        await asyncio.gather(*(self._probe(t) for url, t in list(self.shared.replicas.items()) if not self._routable(url)))
        return True

    def _write_live(self, changed: dict) -> None:
        from mlyard.registry.traffic import Traffic

        Traffic(self._endpoints_api.catalog).write_counts(self.gateway_id, changed)

    def _routable(self, url: str) -> bool:
        t = self.shared.replicas.get(url)
        return t is not None and t.health.status == HEALTHY and not t.ejected

    async def _probe(self, t: Tracked) -> None:
        try:
            status = t.health.probed(time.monotonic(), await probed_status(t, self.check.max_wait_time))
        except UpstreamError as exc:
            status = t.health.probed(time.monotonic(), None, str(exc))
        if status == HEALTHY:
            t.ejected = False
        self.shared.router.set_health(t.url, self._routable(t.url))

    async def _loop(self) -> None:
        next_refresh = next_spent = 0.0
        next_scale = time.monotonic() + self.autoscale_seconds
        while True:
            now = time.monotonic()
            try:
                if now >= next_refresh:
                    await self.refresh()
                    next_refresh = now + self.refresh_seconds
                    self.shared.stats.flush()
                    stats_journal.write(self.shared.stats, self.journal)  # a kill -9 loses no minute
                    changed = self.shared.live.changed()
                    if changed and self._endpoints_api is not None:
                        await asyncio.get_running_loop().run_in_executor(None, self._write_live, changed)
                if now >= next_spent and any(ep.get("budgets") for ep in self.shared.endpoints.values()):
                    # what every gateway replica stored of today's tokens, read off the event loop (only while a
                    # budget is set: a day's minutes are many)
                    await asyncio.get_running_loop().run_in_executor(None, self.shared.stats.reload_today)
                    next_spent = now + 60
                if now >= next_scale:
                    await asyncio.get_running_loop().run_in_executor(None, self.scaling.step)
                    next_scale = now + self.autoscale_seconds
                due = [t for t in self.shared.replicas.values() if (t.health.next_probe() or 0) <= time.monotonic()]
                if due:
                    await asyncio.gather(*(self._probe(t) for t in due))
            except Exception:  # the loop must outlive a bad read (a database being migrated, a file in flux)
                log.exception("refreshing the routing table failed")
            # asleep until the next refresh, scaling step or probe is due (an idle gateway then wakes about once a
            # second, not at a fixed 20 Hz tick), and at least 50 ms (a read that keeps failing is not retried hot)
            probes = [p for t in self.shared.replicas.values() if (p := t.health.next_probe()) is not None]
            await asyncio.sleep(max(0.05, min([next_refresh, next_scale, *probes]) - time.monotonic()))

    def _eject(self, url: str, reason: str) -> None:
        t = self.shared.replicas.get(url)
        if t is not None:
            t.ejected = True
            t.health.probed(time.monotonic(), None, reason)
        self.shared.router.set_health(url, False)

    # -- the head of a request (fastserver calls it before reading the body) ------------------------

    def admit(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Refusal | int | None:
        """Refuse a request on its head alone (404, 401), or give its body limit."""
        if path in chat_page.FILES:  # the chat page: static, no data (serving/chat_page.py)
            return 0
        if path.startswith("/mlyard/"):
            if may_manage(self.shared.internal, path, headers):
                return 64 * 1024
            return 401, error_body("the gateway's management routes need the platform's internal credential"), \
                [(b"www-authenticate", b"Bearer")]
        if path in RAG_ROUTES:  # the RAG is named in the body: its own token is checked once the body is read
            return admit_rag(self.shared, headers)
        try:
            route = self._route(path)
        except NoRoute as exc:
            return 404, error_body(str(exc)), []
        ep = self.shared.endpoints.get(route.endpoint)
        if ep is None:
            return unknown_endpoint(route, self.shared.loaded)
        if not ep["public"]:
            why = token_problem(self.shared.internal, ep, {"headers": headers}, self.shared.members)
            if why is not None:
                return 401, route_error(route, 401, why), [(b"www-authenticate", b"Bearer")]
        return ep.get("max_request_bytes") or self.shared.max_body

    def _route(self, path: str) -> Route:
        """The route of a path (NoRoute when it names none)."""
        route = self._routes.get(path)
        if route is None:
            route = parse(path)
            if len(self._routes) < 4096:  # the paths clients call are few; parsed once each
                self._routes[path] = route
        return route

    # -- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "lifespan":
            return await asgi.lifespan(receive, send, on_startup=self._start, on_shutdown=self._stop)
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path in chat_page.FILES and scope["method"] in ("GET", "HEAD"):
            page, kind = chat_page.body(path)
            return await asgi.reply(send, 200, page, kind, chat_page.HEADERS, head=scope["method"] == "HEAD")
        if path.startswith("/mlyard/"):
            return await admin(self.shared, self.refresh, scope, receive, send, ready=not self.stopping)
        send = self.shared.counted(send)
        if self.shared.in_flight >= self.max_in_flight:
            return await asgi.reply(send, 503, error_body(f"the gateway is at its limit of {self.max_in_flight} requests "
                                                      "in flight; retry shortly"), headers=RETRY_AFTER)
        self.shared.in_flight += 1
        try:
            if path in RAG_ROUTES:
                await rag(self.shared, self._serve, scope, receive, send, path)
            else:
                await self._serve(scope, receive, send, path)
        finally:
            self.shared.in_flight -= 1

    async def _serve(self, scope: dict, receive, send, path: str, route: Route | None = None,
                     body: bytes | None = None) -> None:
        """An endpoint's request: its route, endpoint and token; the stage its traffic shares pick (and a
        shadow); its body; a replica to take it (another when one refuses); the answer relayed and counted,
        then copied to the shadow."""
        started = time.perf_counter()
        if route is None:
            try:
                route = self._route(path)
            except NoRoute as exc:
                return await asgi.reply(send, 404, error_body(str(exc)))
        ep = self.shared.endpoints.get(route.endpoint)
        if ep is None:
            status, body, headers = unknown_endpoint(route, self.shared.loaded)
            return await asgi.reply(send, status, body, headers=headers)
        if not ep["public"] and (why := token_problem(self.shared.internal, ep, scope, self.shared.members)) is not None:
            return await asgi.reply(send, 401, route_error(route, 401, why), headers=[(b"www-authenticate", b"Bearer")])
        caller = caller_of(ep, scope["headers"], self.shared.internal)  # whose use the statistics count
        if (spent := over_budget(self.shared.stats, ep, caller)) is not None:
            return await asgi.reply(send, 429, route_error(route, 429, spent), headers=[
                (b"retry-after", str(max(1, math.ceil(86400 - time.time() % 86400))).encode())])
        if (limits := self.shared.members["limits"].get(ep.get("project"))) is not None and (
                wait := over_limit(self.shared, ep, limits, scope["headers"])):
            return await asgi.reply(send, 429, route_error(route, 429, f"over project {ep.get('project')}'s request "
                                                           f"rate limit; retry in {wait:.2f} s"),
                                    headers=[(b"retry-after", str(max(1, math.ceil(wait))).encode())])
        route = self.shared.router.for_default(route, ep.get("served_models") or ())
        split = self.shared.splits.get(route.endpoint)
        route, fallback, shadow = shared_out(route, split, scope["headers"])
        while isinstance(stage := self.shared.router.stage_or_refusal(route), NoRoute) and await self._recheck():
            ep = self.shared.endpoints.get(route.endpoint, ep)  # a flow may have routed it since the last read
        if isinstance(stage, NoRoute):
            name = route.stage or ep["default"] or ""
            if (known := ep["stages"].get(name)) is not None:  # it exists but serves nothing now (stopped, failed)
                why = f"stage {route.endpoint}/{name} is {known['status']} and serves no requests now"
                return await asgi.reply(send, 503, route_error(route, 503, why), headers=RETRY_AFTER)
            return await asgi.reply(send, 404, route_error(route, 404, str(stage)))
        try:
            if body is None:
                body = await asgi.read_body(receive, ep.get("max_request_bytes") or self.shared.max_body, )
        except asgi.BodyTooLarge as exc:
            return await asgi.reply(send, 413, route_error(route, 413, str(exc)))
        qs = scope.get("query_string") or b""
        target = route.rest + ("?" + qs.decode("latin-1") if qs else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"authorization", REPLICA_HEADER, CALLER_HEADER)]
        taken = await self._forward(scope["method"], route, stage, fallback, target, headers, body, started, caller)
        if not isinstance(taken, Taken):
            status, answer, extra = taken
            return await asgi.reply(send, status, answer, headers=extra)
        whole, failed = await relay(self.shared, send, taken, split, keep=shadow is not None, started=started)
        if shadow is not None:
            mirror(self.shared, Route(taken.route.endpoint, shadow, taken.route.model, taken.route.rest),
                   scope["method"], target, headers, body, whole if not failed else None,
                   split.tolerance if split else 1e-6)

    async def _forward(self, method: str, route: Route, stage: str, fallback: Route | None, target: str,
                       headers: list, body: bytes, started: float, caller: str) -> Taken | tuple[int, bytes, list]:
        """The request sent to the stage's least busy healthy replica (another when one refuses the
        connection; the fallback's stage when the chosen one has none): what answers, or the refusal."""
        key = (route.endpoint, stage, route.model)
        for _ in range(4):
            try:
                replica = self.shared.router.acquire(route)
            except NoRoute as exc:
                return 404, route_error(route, 404, str(exc)), []
            except NoReplica as exc:
                if await self._recheck():  # a replica its flow just found healthy, not yet in the table
                    continue
                self.shared.stats.record(key, (time.perf_counter() - started) * 1000, True, caller=caller)
                if fallback is None:
                    return 503, route_error(route, 503, f"{exc}; retry shortly"), RETRY_AFTER
                # the stage the split chose cannot answer now: counted, then the default's
                self.shared.live.record((route.endpoint, stage), 0.0, True)
                route, fallback = fallback, None
                stage = self.shared.router.stage_of(route)
                key = (route.endpoint, stage, route.model)
                continue
            t = self.shared.replicas.get(replica.url)
            if t is None:  # left the table between acquire and here
                self.shared.router.release(replica)
                continue
            t.requests += 1
            t.active += 1
            try:
                resp = await t.pool.request(method, target, headers + t.credential, body, timeout=self.shared.timeout)
            except UpstreamError as exc:
                t.active -= 1
                self.shared.router.release(replica)
                if not exc.sent:
                    self._eject(replica.url, str(exc))
                    continue  # no answer began there: another replica takes it
                self.shared.stats.record(key, (time.perf_counter() - started) * 1000, True, caller=caller)
                return 502, route_error(route, 502, f"replica {replica.url}: {exc}"), []
            return Taken(route, stage, key, replica, t, resp, caller)
        return 503, route_error(route, 503, "no replica could be reached; retry shortly"), RETRY_AFTER

    def _start(self) -> None:
        stats_journal.recover(self.shared.stats, self.journal.parent, self.journal)  # what killed gateways held
        self._tasks.append(asyncio.get_running_loop().create_task(self._loop()))

    def _stop(self) -> None:
        for task in [*self._tasks, *self.shared.mirrors]:
            task.cancel()
        self.shared.stats.flush(everything=True)
        self.journal.unlink(missing_ok=True)

