"""Logs: the structured records of trainings, tunings, batch inferences, evaluations, endpoints and their
inference requests (core/logrecords.py), found by category, id, level and time.

    from mlyard import logs
    logs.query(category="inference", endpoint="digits", since="1h")
    logs.query(training="3f2a", level="WARNING")        # an id or a unique start of one

The stack's mlyard API keeps the index (tasks/logstore.py) caught up every few seconds and answers
`mlyard logs`; called here, the index is caught up first. On a cluster the API's pods read the records of the
runs' pods through the Kubernetes API's pod logs (tasks/logpods.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from mlyard.core import logrecords as lr
from mlyard.core.errors import SpecError
from mlyard.core.settings import Settings

_STORES: dict[str, Any] = {}
_LOCK = threading.Lock()
MAX_LIMIT = 10_000


def store(home: Any = None) -> Any:
    """The index of this platform's records, opened once per process. It needs no running stack: the
    records of a stopped one are still found."""
    from mlyard.tasks.logstore import LogStore

    home = home or Settings().home_dir
    with _LOCK:
        if str(home) not in _STORES:
            _STORES[str(home)] = LogStore(home, owner=_endpoint_owner)
        return _STORES[str(home)]


def catch_up() -> int:
    _gather_pods()
    return int(store().catch_up())


_PODS: dict[str, Any] = {}


def _gather_pods() -> None:
    """On a cluster: the runs' pods' records, read through the Kubernetes API into the index's folder first
    (tasks/logpods.py); nothing to read elsewhere."""
    from mlyard.core.settings import in_kubernetes_pod

    if not in_kubernetes_pod():
        return
    from mlyard.tasks.kubernetes import cluster_client
    from mlyard.tasks.logpods import PodLogs

    settings = Settings()
    with _LOCK:
        if str(settings.home_dir) not in _PODS:
            _PODS[str(settings.home_dir)] = PodLogs(settings.home_dir, cluster_client("logs", "kubernetes"),
                                                    settings.kube_namespace)
        _PODS[str(settings.home_dir)].gather()


def prune() -> int:
    """Delete the records older than the settings' log_retention_days; how many."""
    return int(store().prune(Settings().log_retention_days))


def keep_indexed(every_seconds: float = 2.0, prune_every_seconds: float = 3600.0) -> None:
    """Keep the index caught up, so that a query finds little left to index, and delete the records past
    their retention once an hour: the mlyard API's thread, for ever."""
    import logging

    pruned = 0.0
    while True:
        try:
            if time.monotonic() - pruned > prune_every_seconds:
                pruned = time.monotonic()
                if n := prune():
                    logging.getLogger("mlyard.service").info("deleted %d log records past their retention", n)
            catch_up()
        except Exception:  # noqa: BLE001 - the next pass tries again; a query catches up itself
            logging.getLogger("mlyard.service").exception("indexing the log records")
        time.sleep(every_seconds)


def query(*, category: str | None = None, training: str | None = None, tuning: str | None = None,
          batch: str | None = None, evaluation: str | None = None, endpoint: str | None = None,
          stage: str | None = None, inference: str | None = None, run: str | None = None,
          level: str | None = None, since: str | float | None = None, until: str | float | None = None,
          limit: int = 100, after: int | None = None, fresh: bool = True) -> list[dict[str, Any]]:
    """The records matching every filter given, oldest first: the latest `limit` of them, or with
    `after` (a record's `seq`) the first `limit` indexed after it (follow mode). `endpoint` is a name
    or an id; the other ids may be cut to a unique start. `since`/`until`: 30m, 1h, 7d ago, an
    ISO-8601 time or epoch seconds. A project member reads their projects' runs' records alone (their
    easymakerAppKey); an admin, every record."""
    from mlyard.endpoints import when
    from mlyard.runs import visible_projects

    if category is not None and lr.category(category).removeprefix("mlyard.") not in lr.CATEGORIES:
        raise SpecError("category", category, f"one of {', '.join(lr.CATEGORIES)}")
    if level is not None and level.upper() not in lr.LEVELS:
        raise SpecError("level", level, "one of INFO, WARNING, ERROR (that level and above)")
    if not 1 <= int(limit) <= MAX_LIMIT:
        raise SpecError("limit", str(limit), f"a number of records from 1 to {MAX_LIMIT}")
    ids = {column: str(value) for column, value in (
        ("training_id", training), ("tuning_id", tuning), ("batch_id", batch), ("evaluation_id", evaluation),
        ("stage_id", stage), ("inference_id", inference), ("flow_run_id", run)) if value}
    for column, value in ids.items():
        if not value.strip():
            raise SpecError(column.removesuffix("_id"), value, "an id or the start of one")
    names: dict[str, str] = {}
    if endpoint:
        ids["endpoint_id"], names["endpoint_id"] = _endpoint_id(endpoint), endpoint
    s = store()
    if fresh:
        _gather_pods()
        s.catch_up()
    return list(s.query(category=category, ids=ids, names=names, level=level, since=when(since, "since"),
                        until=when(until, "until"), after=after, limit=int(limit), projects=visible_projects()))


def _endpoint_owner(endpoint: str) -> dict[str, Any]:
    """Whose the records of `endpoint`'s inference log are: its id and project, from the catalog."""
    view = _catalog_endpoints().get(endpoint)
    return {"endpointId": str(view["id"]), "easymakerAppKey": view["project"]}


def _endpoint_id(endpoint: str) -> str:
    """An endpoint's id from its name (records of requests carry the id; an endpoint deleted since is
    still found by an id given as such)."""
    from mlyard.core.errors import EndpointNotFound

    try:
        return str(_catalog_endpoints().get(endpoint)["id"])
    except EndpointNotFound:
        if endpoint.isdigit():
            return endpoint
        raise


def _catalog_endpoints() -> Any:
    """The catalog's endpoints, over the process's one catalog (the mlyard API answers many queries)."""
    from mlyard.registry.catalog import shared
    from mlyard.registry.endpoints import Endpoints

    url = Settings().catalog_db_url
    with _LOCK:
        if url not in _STORES:
            _STORES[url] = Endpoints(shared(url))
        return _STORES[url]


def follow(poll_seconds: float = 1.0, **filters: Any):
    """Yield the matching records as they are written: the latest `limit` first, then each new one."""
    batch = query(**filters)
    yield from batch
    last = batch[-1]["seq"] if batch else _last_seq()
    filters.pop("limit", None)
    while True:
        time.sleep(poll_seconds)
        for doc in query(after=last, limit=1000, **filters):
            last = doc["seq"]
            yield doc


def _last_seq() -> int:
    return int(store().last_seq())
