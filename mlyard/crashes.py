"""The MLflow side of a crashed flow run: its MLflow runs end FAILED, with the reason, not RUNNING for ever.

A flow run whose process was killed (kill -9, a node lost, the OOM killer) cannot end its own MLflow
run. Prefect marks it CRASHED on one of two paths: its worker saw the process end, or the crash
automation (mlyard/prefect_setup.py) saw its heartbeats stop. Either way Prefect emits
`prefect.flow-run.Crashed`, and the mlyard API, which follows the event stream, ends every MLflow run
that is still RUNNING for that flow run: the training's, the tuning's and its trials', the batch
inference's, the evaluation's. On (re)connecting to the stream it does the same for crashes it did not
see (the API was down, or restarting).

`reconcile` is the one rule: an MLflow run of mlyard's still RUNNING whose flow run has CRASHED
becomes FAILED, `mlyard.status_reason` saying so with Prefect's own message.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, Iterable
from uuid import UUID

from core.names import TAG_BATCH_ID, TAG_EVALUATION_ID, TAG_KIND, TAG_STATUS_REASON, TAG_TRAINING_ID, TAG_TUNING_ID

if TYPE_CHECKING:
    from registry.tracking import Tracking

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


def reconcile(tracking: Tracking, crashed: Callable[[Iterable[str]], dict[str, str]]) -> list[str]:
    """End FAILED every RUNNING MLflow run of mlyard's whose flow run crashed. `crashed(ids)`: the ids
    among them whose flow run is CRASHED, with Prefect's message. Returns the MLflow run ids ended."""
    client = tracking.client
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    running = [r for r in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000)
               if owner(r.data.tags)]
    if not running:
        return []
    messages = crashed({owner(r.data.tags) for r in running})  # type: ignore[misc]
    ended = []
    for r in running:
        message = messages.get(owner(r.data.tags) or "")
        if message is None:
            continue
        tracking.set_tags(r.info.run_id, {TAG_STATUS_REASON: f"its Prefect flow run crashed: {message}"[:5000]})
        tracking.end_run(r.info.run_id, "FAILED")
        ended.append(r.info.run_id)
        log.info("ended MLflow run %s FAILED: its flow run %s crashed", r.info.run_id, owner(r.data.tags))
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


def follow(tracking: Tracking) -> threading.Thread:
    """A daemon thread that reconciles on every `prefect.flow-run.Crashed` event and on (re)connecting."""
    thread = threading.Thread(target=_follow, args=(tracking,), name="mlyard-crashes", daemon=True)
    thread.start()
    return thread


def _follow(tracking: Tracking) -> None:
    import anyio

    anyio.run(_listen, tracking)


async def _listen(tracking: Tracking) -> None:
    import anyio
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    def sweep() -> None:
        try:
            reconcile(tracking, crashed_flow_runs)
        except Exception:  # MLflow or Prefect unreachable for a moment: the next event or reconnect sweeps again
            log.exception("could not end the MLflow runs of crashed flow runs")

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
