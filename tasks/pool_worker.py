"""A Kubernetes pool's worker, as its Deployment runs it (`python -m mlyard.tasks.pool_worker --pool gpu ...`):
Prefect's own worker (`prefect worker start --type kubernetes`, the same arguments), with the one recovery it
lacks (PrefectHQ/prefect#20485, #22664). A worker takes a run by moving it to PENDING, then makes its Job; a
worker stopped between the two (a rolling update's SIGTERM, a node lost) leaves the run PENDING with no Job,
and nothing in Prefect ever takes it again.

So each worker, every SWEEP_SECONDS, queues again (PENDING -> SCHEDULED, with the reason) every run of its
pool that holds such a claim: PENDING for STRANDED_AFTER_SECONDS (MLYARD_STRANDED_AFTER_SECONDS), no infrastructure recorded, its claiming
worker not ONLINE in Prefect (three missed heartbeats; a run still unlabelled has no claimant), and no Job of
the cluster labelled with it. A worker that is alive keeps its claims; a Job that exists keeps its run. The
run's state is read again just before, so a run another worker took meanwhile is left alone.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from uuid import UUID

SWEEP_SECONDS = 15.0
STRANDED_AFTER_SECONDS = 60.0
JOB_LABEL = "prefect.io/flow-run-id"  # what prefect-kubernetes labels a flow run's Job with

log = logging.getLogger("mlyard.pool_worker")


def stranded(client: Any, pool: str, has_job: Callable[[UUID, str], bool], after: float = STRANDED_AFTER_SECONDS,
             now: datetime | None = None) -> list[UUID]:
    """The runs of `pool` whose claim, older than `after` seconds, was left by a worker that is gone, queued
    again; their ids."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType, WorkerStatus
    from prefect.states import Scheduled

    now = now or datetime.now(timezone.utc)
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200)
    if not runs:
        return []
    online = {w.name for w in client.read_workers_for_work_pool(pool) if w.status == WorkerStatus.ONLINE}
    namespace = _pool_namespace(client, pool)
    queued = []
    for run in runs:
        claimant = (run.labels or {}).get("prefect.worker.name")
        if (run.infrastructure_pid or run.state is None or claimant in online
                or run.state.timestamp > now - timedelta(seconds=after)
                or has_job(run.id, (run.job_variables or {}).get("namespace") or namespace)):
            continue
        fresh = client.read_flow_run(run.id)
        if fresh.state is None or fresh.state.id != run.state.id or fresh.infrastructure_pid:
            continue  # taken or moved on since it was listed
        why = (f"its worker {claimant or '(none yet)'} stopped before making its Job; queued again for "
               f"another worker of pool {pool}")
        result = client.set_flow_run_state(run.id, Scheduled(message=why))
        if result.status.value == "ACCEPT":
            log.warning("flow run %s (%s): %s", run.id, run.name, why)
            queued.append(run.id)
    return queued


def _pool_namespace(client: Any, pool: str) -> str:
    template = client.read_work_pool(pool).base_job_template or {}
    return str(template.get("variables", {}).get("properties", {}).get("namespace", {}).get("default") or "default")


def job_lookup() -> Callable[[UUID, str], bool]:
    """Whether the cluster holds a Job of a flow run, asked as this worker (its ServiceAccount in a pod,
    KUBECONFIG elsewhere), which lists Jobs already to make and follow them."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    batch = client.BatchV1Api()

    def has_job(run_id: UUID, namespace: str) -> bool:
        return bool(batch.list_namespaced_job(namespace, label_selector=f"{JOB_LABEL}={run_id}", limit=1).items)

    return has_job


def sweep_forever(pool: str, stop: threading.Event) -> None:
    """`stranded` every SWEEP_SECONDS until `stop`; a failed sweep is logged and tried again."""
    from prefect.client.orchestration import get_client

    from mlyard.core.environment import stranded_after_seconds

    has_job, after = None, stranded_after_seconds(STRANDED_AFTER_SECONDS)
    while not stop.wait(SWEEP_SECONDS):
        try:
            has_job = has_job or job_lookup()
            with get_client(sync_client=True) as client:
                stranded(client, pool, has_job, after)
        except Exception as exc:  # noqa: BLE001 - the Prefect server or the cluster away: the next sweep tries again
            log.warning("the sweep for runs stranded in pool %s failed (%s: %s); trying again in %.0f s", pool,
                        type(exc).__name__, exc, SWEEP_SECONDS)


def main(argv: list[str]) -> None:
    """Prefect's worker with `argv` (`--pool` among them), and the sweep of its pool in a thread beside it."""
    from prefect.cli import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pool = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--pool", "-p")), None)
    if pool is None:
        sys.exit("python -m mlyard.tasks.pool_worker: --pool is required (the work pool whose worker this is)")
    threading.Thread(target=sweep_forever, args=(pool, threading.Event()), name="mlyard-stranded-sweep",
                     daemon=True).start()
    sys.argv = ["prefect", "worker", "start", *argv]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
