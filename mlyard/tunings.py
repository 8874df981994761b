"""Tunings as users see them: flow runs of the `tune` flow with the seeds' statuses (derived from
Prefect's state) and their trials from the Optuna study in the platform DB."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlyard.errors import NotFound

FLOW_NAME = "tune"
_BY_STATE = {"SCHEDULED": "CREATE REQUESTED", "PENDING": "CREATE REQUESTED", "PAUSED": "CREATE REQUESTED",
             "RUNNING": "RUNNING", "COMPLETED": "COMPLETE", "CANCELLING": "STOP IN PROGRESS", "CANCELLED": "STOPPED",
             "FAILED": "FAIL HYPERPARAMETER TUNING", "CRASHED": "FAIL HYPERPARAMETER TUNING"}
ACTIVE = {"CREATE REQUESTED", "RUNNING", "STOP IN PROGRESS"}


class TuningNotFound(NotFound):
    kind = "tuning"
    hint = "List tunings with `mlyard tunings list`."


def tuning_status(state_type: str | None, message: str | None) -> str:
    """COMPLETE carries its reason as the console shows it: COMPLETE (GoalReached)."""
    status = _BY_STATE.get(state_type or "SCHEDULED", state_type or "")
    if status == "COMPLETE" and message and message.startswith("COMPLETE ("):
        return message
    return status


@dataclass
class TuningInfo:
    id: str
    name: str
    status: str
    cause: str | None
    run_seconds: float
    created_at: str
    spec: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _info(fr) -> TuningInfo:
    spec = (fr.parameters or {}).get("spec") or {}
    st = fr.state.type.value if fr.state else None
    status = tuning_status(st, fr.state.message if fr.state else None)
    cause = None
    if st in ("FAILED", "CRASHED", "CANCELLED", "CANCELLING") and fr.state.message:
        cause = fr.state.message.removeprefix("Flow run encountered an exception: ")
    secs = fr.estimated_run_time.total_seconds() if fr.estimated_run_time else 0.0
    return TuningInfo(str(fr.id), spec.get("name", fr.name), status, cause, round(secs, 1),
                      fr.created.isoformat(timespec="seconds") if fr.created else "", spec)


def list_tunings(limit: int = 100) -> list[TuningInfo]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=min(limit, 200))
    return [_info(r) for r in runs]


def get_tuning(tuning_id: str) -> TuningInfo:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            fr = client.read_flow_run(tuning_id)
        except Exception as exc:
            raise TuningNotFound(tuning_id) from exc
        if fr.flow_id is None or client.read_flow(fr.flow_id).name != FLOW_NAME:
            raise TuningNotFound(tuning_id)
        return _info(fr)


def stop_tuning(tuning_id: str, reason: str = "stopped by user") -> TuningInfo:
    """Stop a tuning: its running trials are KILLED; it becomes STOPPED."""
    from flows.platform import cancel_flow_run

    info = get_tuning(tuning_id)
    if info.status not in ACTIVE:
        return info
    cancel_flow_run(tuning_id, reason)
    return get_tuning(tuning_id)


def trials(catalog_url: str, tuning_id: str) -> list[dict[str, Any]]:
    """The tuning's trials (Katib states, params, objective, MLflow run) from its study."""
    import optuna

    from tuning.engine import trial_reports

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=f"mlyard-tuning-{tuning_id}", storage=catalog_url)
    except KeyError:
        return []
    return [{**asdict(r), "state": r.state.value} for r in trial_reports(study)]
