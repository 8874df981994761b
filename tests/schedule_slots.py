"""A schedule firing every second and its runs, for the tests that move the scheduler (its Lease, a rolling
restart: tests/infra/test_leases.py, tests/infra/test_rolling_restart.py): the schedule made in a catalog,
its runs' slots as Prefect holds them, and a stand-in for the pool's worker that completes them at once."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def every_second(catalog_url: str, name: str = "every-second") -> str:
    """A schedule firing every second in the replicas' own catalog, whose runs target the gpu pool (no
    worker serves it here; `finisher_of` ends them, so they cost nothing). Returns its runs' tag."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client

    from mlyard.core.specs.schedule import ScheduleSpec
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules

    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    spec = ScheduleSpec(name=name, deployment="train/train-gpu", cron="* * * * * *", start_time=start,
                        max_concurrency=10, catchup=True, parameters={"spec": {
                            "name": "lease-{{ slot_date }}", "source_uri": str(ROOT / "examples" / "sklearn_digits"),
                            "entry_point": "train.py"}})
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train/train-gpu")
    catalog = Catalog(catalog_url)
    Schedules(catalog).create(spec.name, spec.model_dump(mode="json"), str(deployment.id), "CREATE REQUESTED",
                              int(start.timestamp()) - 1)
    catalog.dispose()
    return f"mlyard.schedule:{spec.name}"


def slots(tag: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    runs: dict = {}  # by id: the schedule makes runs while this pages, so a page can repeat the last one's end
    offset = 0
    with get_client(sync_client=True) as client:
        while page := client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
                                            limit=200, offset=offset):
            runs.update((r.id, r) for r in page)
            offset += len(page)
    return [t for r in runs.values() for t in r.tags if t.startswith("mlyard.slot:")]


def _complete_queued(client, tag: str) -> int:
    """Complete every queued run of the schedule at once, as the pool's worker would run them; how many."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed

    queued = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        tags=FlowRunFilterTags(all_=[tag]), state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING]))), limit=200)
    for run in queued:
        client.set_flow_run_state(run.id, Completed(), force=True)
    return len(queued)


def finisher_of(tag: str, stop) -> None:
    """Play the pool's worker: every queued run of the schedule completes at once (freeing its slot)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(0.3):
            _complete_queued(client, tag)


def finish_all(tag: str) -> None:
    """After the schedulers stopped: no queued run of the schedule is left for a later test's gpu worker."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while _complete_queued(client, tag):
            pass
