"""Trainings as users see them: Prefect flow runs of the `train` flow, with statuses as the seeds
name them derived from Prefect's state (never stored), and the MLflow run each one logged to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from mlyard.errors import TrainingNotFound

FLOW_NAME = "train"
RUN_TASK_PREFIX = "run-entry-point"

# Prefect state type -> status shown to users (DESIGN §1: derived, not copied).
_BY_STATE = {
    "SCHEDULED": "CREATE REQUESTED",
    "PENDING": "CREATE REQUESTED",
    "PAUSED": "CREATE REQUESTED",
    "COMPLETED": "COMPLETE",
    "CANCELLING": "STOP IN PROGRESS",
    "CANCELLED": "STOPPED",
}
ACTIVE_STATUSES = {"CREATE REQUESTED", "CREATE IN PROGRESS", "RUNNING", "STOP IN PROGRESS"}


def training_status(state_type: str | None, entry_point_started: bool) -> str:
    """The seeds' training status for a flow run in `state_type`.

    RUNNING only once the entry point runs (before that the run stages inputs and builds its
    environment: CREATE IN PROGRESS). A failure before the entry point started is CREATE FAILED;
    after, FAIL TRAIN. A crash of the infrastructure counts as FAIL TRAIN.
    """
    if state_type is None:
        return "CREATE REQUESTED"
    if state_type == "RUNNING":
        return "RUNNING" if entry_point_started else "CREATE IN PROGRESS"
    if state_type in ("FAILED", "CRASHED"):
        return "FAIL TRAIN" if entry_point_started or state_type == "CRASHED" else "CREATE FAILED"
    return _BY_STATE.get(state_type, state_type)


@dataclass
class TrainingInfo:
    id: str
    name: str
    experiment: str
    status: str
    cause: str | None
    run_seconds: float
    created_at: str
    work_pool: str | None
    flow_run_name: str
    spec: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _info(fr, started: bool) -> TrainingInfo:
    spec = (fr.parameters or {}).get("spec") or {}
    state_type = fr.state.type.value if fr.state else None
    status = training_status(state_type, started)
    cause = None
    if status in ("FAIL TRAIN", "CREATE FAILED", "STOPPED", "STOP IN PROGRESS") and fr.state and fr.state.message:
        cause = fr.state.message.removeprefix("Flow run encountered an exception: ")
    run_seconds = fr.estimated_run_time.total_seconds() if fr.estimated_run_time else 0.0
    created = fr.created or datetime.now(timezone.utc)
    return TrainingInfo(str(fr.id), spec.get("name", fr.name), spec.get("experiment", "default"), status, cause,
                        round(run_seconds, 1), created.isoformat(timespec="seconds"), fr.work_pool_name, fr.name, spec)


def _started(client, ids: list) -> set[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    if not ids:
        return set()
    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
        task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=RUN_TASK_PREFIX)),
    )
    return {str(t.flow_run_id) for t in runs if t.state and t.state.type.value != "PENDING"}


def list_trainings(limit: int = 100, experiment: str | None = None, active_only: bool = False) -> list[TrainingInfo]:
    """Newest first. `active_only`: only those not yet finished (queued, preparing, running, stopping)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = None
    if active_only:
        active = [StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED, StateType.RUNNING, StateType.CANCELLING]
        run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active)))
    runs = []
    with get_client(sync_client=True) as client:
        while len(runs) < limit:  # the API serves at most 200 a page
            page = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                                         flow_run_filter=run_filter, sort=FlowRunSort.START_TIME_DESC,
                                         limit=min(200, limit - len(runs)), offset=len(runs))
            runs += page
            if len(page) < 200:
                break
        started = _started(client, [r.id for r in runs])
    out = [_info(r, str(r.id) in started) for r in runs]
    return [t for t in out if experiment is None or t.experiment == experiment]


def get_training(training_id: str) -> TrainingInfo:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            fr = client.read_flow_run(training_id)
        except (ObjectNotFound, ValueError) as exc:
            raise TrainingNotFound(training_id) from exc
        except Exception as exc:  # a malformed id comes back as a 422
            if "422" in str(exc):
                raise TrainingNotFound(training_id) from exc
            raise
        if fr.flow_id is None or client.read_flow(fr.flow_id).name != FLOW_NAME:
            raise TrainingNotFound(training_id)
        return _info(fr, bool(_started(client, [fr.id])))


def stop_training(training_id: str, reason: str = "stopped by user") -> TrainingInfo:
    """Stop a training: the whole process group of its script is ended; it becomes STOPPED."""
    from flows.platform import cancel_flow_run

    info = get_training(training_id)
    if info.status not in ACTIVE_STATUSES:
        return info
    cancel_flow_run(training_id, reason)
    return get_training(training_id)


def active_in_experiment(experiment: str) -> list[str]:
    return [t.name for t in list_trainings(limit=10_000, experiment=experiment, active_only=True)
            if t.status in ACTIVE_STATUSES]
