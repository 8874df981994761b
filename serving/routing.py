"""The gateway's routing, pure: where a request goes and which replica takes it.

URLs, per endpoint (EasyMaker's resource paths, appendix 10, under the endpoint and stage):

    /{endpoint}/{model}/v1/...                 the endpoint's default stage
    /{endpoint}/stages/{stage}/{model}/v1/...  a named stage (also /v2/..., /openai/v1/...)

A stage's replicas are the processes (or Services) of its stage resources; several resources of one
stage that serve the same model share its requests. A request goes to the healthy replica of that
model with the fewest requests outstanding; ties go round the replicas in turn. With no healthy
replica the gateway answers 503 with Retry-After.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection
from dataclasses import dataclass, field

from mlyard.core.errors import NoReplica, NoRoute

PROTOCOLS = ("v1", "v2", "openai", "score")  # score: an entry script's route (Azure ML)






@dataclass(frozen=True)
class Route:
    endpoint: str
    stage: str | None  # None: the endpoint's default stage
    model: str
    rest: str  # the path the replica serves: /v1/models/{model}:predict, ...


def parse(path: str) -> Route:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 4 and parts[1] == "stages":
        endpoint, stage, tail = parts[0], parts[2], parts[3:]
    elif len(parts) >= 2:
        endpoint, stage, tail = parts[0], None, parts[1:]
    else:
        raise NoRoute(f"no route {path}; use /{{endpoint}}/{{model}}/v1/..., /v2/..., /openai/v1/... or /score "
                      "(/{endpoint}/stages/{stage}/... for a stage other than the default)")
    if len(tail) < 2 or tail[1] not in PROTOCOLS:
        raise NoRoute(f"no route {path}: after the model name comes v1, v2, openai or score")
    return Route(endpoint, stage, tail[0], "/" + "/".join(tail[1:]))


@dataclass
class Replica:
    url: str
    model: str
    healthy: bool = True
    outstanding: int = 0


@dataclass
class _Stage:
    replicas: list[Replica] = field(default_factory=list)
    turn: itertools.count = field(default_factory=itertools.count)


class Router:
    """The routing table and the outstanding-request counts (thread-safe)."""

    def __init__(self) -> None:
        self._stages: dict[tuple[str, str], _Stage] = {}
        self._default: dict[str, str] = {}
        self._default_models: dict[str, frozenset[str]] = {}  # what each default stage serves (for_default)
        self._lock = threading.Lock()

    def _models_changed(self, endpoint: str) -> None:
        """(under the lock) The models of `endpoint`'s default stage, kept for the request path."""
        st = self._stages.get((endpoint, self._default.get(endpoint) or ""))
        self._default_models[endpoint] = frozenset(r.model for r in st.replicas) if st is not None else frozenset()

    def set_stage(self, endpoint: str, stage: str, replicas: list[Replica], default: bool = False) -> None:
        """Put a stage's replicas into routing. A replica it already had stays the same object (health
        updated): requests in flight release the object they acquired, so its count stays right."""
        with self._lock:
            current = self._stages.get((endpoint, stage))
            old = {r.url: r for r in current.replicas} if current is not None else {}
            kept = []
            for r in replicas:
                same = old.get(r.url)
                if same is not None and same.model == r.model:
                    same.healthy = r.healthy
                    kept.append(same)
                else:
                    kept.append(r)
            if current is not None:
                current.replicas = kept
            else:
                self._stages[(endpoint, stage)] = _Stage(kept)
            if default:
                self._default[endpoint] = stage  # traffic moves at once: the next request goes here
            self._models_changed(endpoint)

    def remove_stage(self, endpoint: str, stage: str) -> None:
        with self._lock:
            self._stages.pop((endpoint, stage), None)
            if self._default.get(endpoint) == stage:
                del self._default[endpoint]
            self._models_changed(endpoint)

    def set_default(self, endpoint: str, stage: str | None) -> None:
        with self._lock:
            if stage is None:
                self._default.pop(endpoint, None)
            else:
                self._default[endpoint] = stage
            self._models_changed(endpoint)

    def stages(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._stages)

    def view(self) -> dict[str, dict]:
        """The table as it stands: per endpoint its default stage and each stage's replicas."""
        with self._lock:
            out: dict[str, dict] = {}
            for (endpoint, stage), st in sorted(self._stages.items()):
                ep = out.setdefault(endpoint, {"default": self._default.get(endpoint), "stages": {}})
                ep["stages"][stage] = [{"url": r.url, "model": r.model, "healthy": r.healthy,
                                        "outstanding": r.outstanding} for r in st.replicas]
            for endpoint, stage in self._default.items():
                out.setdefault(endpoint, {"default": stage, "stages": {}})
            return out

    def set_health(self, url: str, healthy: bool) -> None:
        with self._lock:
            for st in self._stages.values():
                for r in st.replicas:
                    if r.url == url:
                        r.healthy = healthy

    def stage_of(self, route: Route) -> str:
        stage = route.stage or self._default.get(route.endpoint)
        if stage is None or (route.endpoint, stage) not in self._stages:
            known = route.endpoint in self._default or any(e == route.endpoint for e, _ in self._stages)
            if not known:
                raise NoRoute(f"no endpoint {route.endpoint!r}")
            raise NoRoute(f"endpoint {route.endpoint!r} has no stage {route.stage or '(default)'!r}")
        return stage

    def stage_or_refusal(self, route: Route) -> str | NoRoute:
        """`stage_of`, with its refusal returned rather than raised."""
        try:
            return self.stage_of(route)
        except NoRoute as exc:
            return exc

    def for_default(self, route: Route, served_before: Collection[str] = ()) -> Route:
        """An endpoint's default URL keeps answering whatever model its default stage serves: a route to the
        default stage naming a model the endpoint served before (`served_before`) but the stage does not,
        when it serves exactly one (a promotion made a stage serving another model the default), goes to
        that model, its path renamed to match. A name the endpoint never served stays unknown (404)."""
        if route.stage is not None or route.model not in served_before:
            return route
        models = self._default_models.get(route.endpoint, frozenset())  # one dict read: no lock on this path
        if route.model in models or len(models) != 1:
            return route
        (only,) = models
        rest = route.rest.replace(f"/models/{route.model}", f"/models/{only}", 1)
        return Route(route.endpoint, None, only, rest)

    def acquire(self, route: Route) -> Replica:
        """The replica for this request, its outstanding count raised; call `release` when done."""
        with self._lock:
            stage = self.stage_of(route)
            st = self._stages[(route.endpoint, stage)]
            serving = [r for r in st.replicas if r.model == route.model]
            if not serving:
                models = sorted({r.model for r in st.replicas})
                raise NoRoute(f"stage {route.endpoint}/{stage} serves no model {route.model!r}; it serves "
                              f"{', '.join(models) or 'none'}")
            healthy = [r for r in serving if r.healthy]
            if not healthy:
                raise NoReplica(f"no healthy replica of {route.model!r} in {route.endpoint}/{stage} now")
            fewest = min(r.outstanding for r in healthy)
            ties = [r for r in healthy if r.outstanding == fewest]
            pick = ties[next(st.turn) % len(ties)]
            pick.outstanding += 1
            return pick

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.outstanding = max(0, replica.outstanding - 1)
