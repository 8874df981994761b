"""The mlyard API's Prometheus routes, which the scrape credential reads, and nothing else
(core/environment.metrics_token; mlyard/service.py lets it through to these paths alone):

    GET /metrics          the API's requests by route and status, their seconds, the process; and the runs
                          waiting for a worker, per work pool and state, with the oldest one's age
                          (`mlyard_runs_waiting`, `mlyard_runs_oldest_waiting_seconds`), which the alert rules of
                          infra/k8s/components/monitoring compare with the queue's expected wait
    GET /metrics/prefect  the Prefect server's own /api/metrics, relayed with the platform's Prefect credential,
                          so that Prometheus never holds that credential (it changes everything in Prefect)
"""

from __future__ import annotations

from typing import Any, Iterator

from fastapi import Response  # module-level: FastAPI reads the routes' annotations here (the docs)

METRICS = ("/metrics", "/metrics/prefect")
WAITING = ("PENDING", "SCHEDULED")  # a scheduled run whose time has come waits too (Prefect then calls it Late)


class WaitingRuns:
    """A collector: the flow runs whose time has come and that no worker runs yet, read from Prefect at each
    scrape (a few counting queries; a Prefect that does not answer gives no sample, and a warning in the API's
    log, rather than a failed scrape)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        waiting = GaugeMetricFamily("mlyard_runs_waiting", "Flow runs due and not running yet, by pool and state.",
                                    labels=["pool", "state"])
        oldest = GaugeMetricFamily("mlyard_runs_oldest_waiting_seconds", "How long the oldest due run of a pool has "
                                   "waited for a worker.", labels=["pool"])
        try:
            counts, ages = _due_runs()
        except Exception as exc:  # noqa: BLE001 - Prefect down: its own alert says so; this scrape still answers
            import logging

            logging.getLogger("mlyard.metrics").warning("the runs waiting could not be read: %s", exc)
            counts, ages = {}, {}
        for (pool, state), n in sorted(counts.items()):
            waiting.add_metric([pool, state], n)
        for pool, age in sorted(ages.items()):
            oldest.add_metric([pool], round(age, 1))
        yield waiting
        yield oldest


def _due_runs() -> tuple[dict[tuple[str, str], int], dict[str, float]]:
    """Per work pool: how many runs wait in each state (due: a scheduled one whose time has come), and how long the
    oldest of them has waited. A few counting queries, whatever the number of runs."""
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterNextScheduledStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    now = datetime.now(timezone.utc)
    due_by: Any = now  # pydantic makes it Prefect's DateTime
    counts: dict[tuple[str, str], int] = {}
    ages: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        for pool in (p.name for p in client.read_work_pools()):
            in_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
            for state in WAITING:
                due = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(state)])),
                                    next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=due_by)
                                    if state == "SCHEDULED" else None)
                counts[(pool, state)] = client.count_flow_runs(flow_run_filter=due, work_pool_filter=in_pool)
                if counts[(pool, state)]:
                    (first,) = client.read_flow_runs(flow_run_filter=due, work_pool_filter=in_pool, limit=1,
                                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC)
                    since = first.expected_start_time or first.created or now
                    ages[pool] = max(ages.get(pool, 0.0), (now - since).total_seconds())
            ages.setdefault(pool, 0.0)
    return counts, ages


def install(app: Any, registry: Any) -> None:
    """The two routes on `app` (the API's registry: its requests, its process), and the waiting runs' collector."""
    registry.register(WaitingRuns())

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text (the scrape or internal credential)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/prefect")
    def prefect_metrics() -> Response:
        """The Prefect server's Prometheus text, relayed (the scrape or internal credential)."""
        import base64

        import httpx
        from prefect.settings import get_current_settings

        api = get_current_settings().api
        auth = api.auth_string.get_secret_value() if api.auth_string else None
        headers = {"authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        try:
            got = httpx.get(f"{str(api.url).rstrip('/')}/metrics", headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            return Response(f"the Prefect server did not answer: {exc}\n", status_code=502, media_type="text/plain")
        return Response(got.content, status_code=got.status_code,
                        media_type=got.headers.get("content-type", "text/plain"))
