"""The MLflow side of a crashed flow run: its MLflow runs end FAILED, with the reason, not RUNNING for ever.

A flow run whose process was killed (kill -9, a node lost, the OOM killer) cannot end its own MLflow
run. Prefect marks it CRASHED on one of two paths: its worker saw the process end, or the crash
automation (mlyard/prefect_setup.py) saw its heartbeats stop. Either way Prefect emits
`prefect.flow-run.Crashed`, and the mlyard API, which follows the event stream (on a cluster, the one
replica that holds the Lease mlyard-api), ends every MLflow run that is still RUNNING for that flow run: the
training's, the tuning's and its trials' (KILLED, and the trials still RUNNING in the tuning's study too),
the batch inference's, the evaluation's. On (re)connecting to the stream it does the same for crashes it
did not see (the API was down, or restarting).

`reconcile` is the one rule: an MLflow run of mlyard's still RUNNING whose flow run has CRASHED
becomes FAILED, `mlyard.status_reason` saying so with Prefect's own message.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, Iterable
from uuid import UUID

from mlyard.core.names import (
    TAG_BATCH_ID,
    TAG_EVALUATION_ID,
    TAG_KIND,
    TAG_STATUS_REASON,
    TAG_TRAINING_ID,
    TAG_TUNING_ID,
)

if TYPE_CHECKING:
    from mlyard.registry.tracking import Tracking

log = logging.getLogger("mlyard.crashes")
RECONNECT_SECONDS = 5.0
OWNER_TAG = {"training": TAG_TRAINING_ID, "tuning": TAG_TUNING_ID, "trial": TAG_TUNING_ID,
             "batch_inference": TAG_BATCH_ID, "evaluation": TAG_EVALUATION_ID}


def owner(tags: dict[str, str]) -> str | None:
    """The flow run an MLflow run of mlyard's belongs to (a trial's: its tuning's), or None."""
    tag = OWNER_TAG.get(tags.get(TAG_KIND, ""))
    value = tags.get(tag) if tag else None
    try:
        return str(UUID(value)) if value else None
    except ValueError:
        return None


def reconcile(tracking: Tracking, crashed: Callable[[Iterable[str]], dict[str, str]],
              end_trials: Callable[[str], object] | None = None) -> list[str]:
    """End FAILED every RUNNING MLflow run of mlyard's whose flow run crashed (a trial's KILLED, as Katib
    names a trial its tuning stopped). `crashed(ids)`: the ids among them whose flow run is CRASHED, with
    Prefect's message. `end_trials(tuning_id)`: the crashed tuning's trials still RUNNING in its study end
    KILLED too. Returns the MLflow run ids ended."""
    client = tracking.client
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    running = [r for r in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000)
               if owner(r.data.tags)]
    if not running:
        return []
    messages = crashed({owner(r.data.tags) for r in running})  # type: ignore[misc]
    ended, tunings = [], set()
    for r in running:
        message = messages.get(owner(r.data.tags) or "")
        if message is None:
            continue
        kind = r.data.tags.get(TAG_KIND)
        status = "KILLED" if kind == "trial" else "FAILED"
        tracking.set_tags(r.info.run_id, {TAG_STATUS_REASON: f"its Prefect flow run crashed: {message}"[:5000]})
        tracking.end_run(r.info.run_id, status)
        ended.append(r.info.run_id)
        if kind in ("tuning", "trial"):
            tunings.add(owner(r.data.tags))
        log.info("ended MLflow run %s %s: its flow run %s crashed", r.info.run_id, status, owner(r.data.tags))
    for tuning_id in sorted(t for t in tunings if t) if end_trials is not None else ():
        end_trials(tuning_id)
    return ended


def crashed_flow_runs(ids: Iterable[str]) -> dict[str, str]:
    """Which of these flow runs are CRASHED, with their state's message (Prefect's API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    wanted = [UUID(i) for i in ids]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=wanted), state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED]))),
            limit=len(wanted))
    return {str(r.id): (r.state.message if r.state and r.state.message else "no reason given") for r in runs}


def follow(tracking: Tracking, catalog_url: str, lease: str | None = None, namespace: str = "default") -> threading.Thread:
    """A daemon thread that reconciles on every `prefect.flow-run.Crashed` event and on (re)connecting; with
    `lease` (a cluster's API replicas), only while this process holds it (tasks/leader.py: one writer)."""
    if lease:
        from mlyard.tasks.leader import while_leading

        target: Callable[..., object] = while_leading
        args: tuple = (lease, namespace, lambda lost: follow_until(tracking, catalog_url, lost))
    else:
        target, args = follow_until, (tracking, catalog_url)
    thread = threading.Thread(target=target, args=args, name="mlyard-crashes", daemon=True)
    thread.start()
    return thread


def follow_until(tracking: Tracking, catalog_url: str, lost: threading.Event | None = None) -> None:
    """Reconcile on every Crashed event and on (re)connecting, until `lost` is set (a cluster's API replica
    follows only while it holds the Lease: tasks/leader.py's `while_leading`), or for ever."""
    import anyio

    anyio.run(_listen, tracking, catalog_url, lost or threading.Event())


async def _listen(tracking: Tracking, catalog_url: str, lost: threading.Event) -> None:
    import anyio
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    from mlyard import tunings

    def sweep() -> None:
        if lost.is_set():
            return  # another replica leads now: it sweeps
        try:
            reconcile(tracking, crashed_flow_runs,
                      end_trials=lambda tuning_id: tunings.end_interrupted_trials(catalog_url, tuning_id))
        except Exception:  # MLflow or Prefect unreachable for a moment: the next event or reconnect sweeps again
            log.exception("could not end the MLflow runs of crashed flow runs")

    async def listen() -> None:
        only_crashed = EventFilter(event=EventNameFilter(name=["prefect.flow-run.Crashed"]))
        while True:
            try:
                async with get_events_subscriber(filter=only_crashed) as events:
                    await anyio.to_thread.run_sync(sweep)  # crashes while nobody listened
                    async for _event in events:
                        await anyio.to_thread.run_sync(sweep)
            except Exception as exc:  # the server restarting
                log.warning("the event stream was lost (%s); reconnecting in %.0f s", exc, RECONNECT_SECONDS)
            await anyio.sleep(RECONNECT_SECONDS)

    async with anyio.create_task_group() as group:
        group.start_soon(listen)
        while not lost.is_set():
            await anyio.sleep(0.5)
        group.cancel_scope.cancel()
