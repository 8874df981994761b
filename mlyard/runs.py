"""Lifecycle runs as users see them: Prefect flow runs of one flow (train, batch-inference, evaluate)
with the seeds' statuses derived from Prefect's state, never stored (DESIGN §1).

A run is CREATE IN PROGRESS while it prepares (stages inputs, loads a model), RUNNING once its
marker task (the step that does the work) has started, and COMPLETE IN PROGRESS once its closing
step (joining outputs, writing the summary) has; a failure before the marker is CREATE FAILED, after
it the kind's own failure status (FAIL TRAIN, FAIL BATCH INFERENCE, FAIL MODEL EVALUATION).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from mlyard.core.access import DEFAULT_PROJECT, PROJECT_TAG, current, project_of_tags, project_tags
from mlyard.core.errors import (
    BatchNotFound,
    EvaluationNotFound,
    NotFound,
    PlatformUnreachable,
    SpecError,
    TrainingNotFound,
    TuningNotFound,
)
from mlyard.core.names import (
    FLOW_BATCH,
    FLOW_EVALUATE,
    FLOW_TRAIN,
    FLOW_TUNE,
    STARTED_LABEL,
    TASK_EVALUATION_BATCH,
    TASK_FINISH,
    TASK_RECORD,
    TASK_RUN_ENTRY_POINT,
    TASK_RUN_WORKERS,
    TASK_TRIAL,
)


@dataclass(frozen=True)
class Kind:
    flow: str  # the Prefect flow name
    spec: str  # its spec model, module:class
    marker: str  # task run name prefix that means the work itself started
    fail: str  # status of a failure after the marker started
    noun: str
    not_found: type[NotFound]
    command: str  # the CLI group
    closing: str | None = None  # task run name prefix of the last step (joining, summing up): COMPLETE IN PROGRESS
    complete_reason: bool = False  # COMPLETE shows the flow's reason, as the console does: COMPLETE (GoalReached)


TRAINING = Kind(FLOW_TRAIN, "mlyard.core.specs.training:TrainingSpec", TASK_RUN_ENTRY_POINT, "FAIL TRAIN", "training", TrainingNotFound, "trainings")
TUNING = Kind(FLOW_TUNE, "mlyard.core.specs.tuning:TuningSpec", TASK_TRIAL, "FAIL HYPERPARAMETER TUNING", "tuning", TuningNotFound, "tunings",
              complete_reason=True)
BATCH = Kind(FLOW_BATCH, "mlyard.core.specs.batch:BatchInferenceSpec", TASK_RUN_WORKERS, "FAIL BATCH INFERENCE", "batch inference", BatchNotFound, "batches",
             closing=TASK_FINISH)
EVALUATION = Kind(FLOW_EVALUATE, "mlyard.core.specs.evaluation:EvaluationSpec", TASK_EVALUATION_BATCH, "FAIL MODEL EVALUATION", "evaluation", EvaluationNotFound,
                  "evaluations", closing=TASK_RECORD)

_BY_STATE = {"SCHEDULED": "CREATE REQUESTED", "PENDING": "CREATE REQUESTED", "PAUSED": "CREATE REQUESTED",
             "COMPLETED": "COMPLETE", "CANCELLING": "STOP IN PROGRESS", "CANCELLED": "STOPPED"}
ACTIVE_STATUSES = {"CREATE REQUESTED", "CREATE IN PROGRESS", "RUNNING", "COMPLETE IN PROGRESS", "STOP IN PROGRESS"}


def status(kind: Kind, state_type: str | None, started: bool, closing: bool = False) -> str:
    """The seeds' status for a flow run in `state_type`; a crash of the infrastructure is a failure."""
    if state_type is None:
        return "CREATE REQUESTED"
    if state_type == "RUNNING":
        return ("COMPLETE IN PROGRESS" if closing else "RUNNING") if started else "CREATE IN PROGRESS"
    if state_type in ("FAILED", "CRASHED"):
        return kind.fail if started or state_type == "CRASHED" else "CREATE FAILED"
    return _BY_STATE.get(state_type, state_type)


@dataclass
class RunInfo:
    id: str
    name: str
    status: str
    cause: str | None
    run_seconds: float
    created_at: str
    work_pool: str | None
    flow_run_name: str
    parent_id: str | None  # the flow run that started this one as a subflow (an evaluation's batch)
    spec: dict[str, Any]
    project: str = "default"
    waiting: str | None = None  # a local run waiting for a place: where it stands in line, and why (tasks/local_line.py)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pairs_in(value: Any) -> bool:
    """A list of {key, value} pairs somewhere in a spec: a mapping as the Prefect UI's Run form sends it."""
    if isinstance(value, dict):
        return any(_pairs_in(v) for v in value.values())
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and set(i) == {"key", "value"}
                                                           for i in value)


def _info(kind: Kind, fr, started: bool, parent_id: str | None, closing: bool = False) -> RunInfo:
    spec = (fr.parameters or {}).get("spec") or {}
    if _pairs_in(spec):  # a run from the Run form: its mappings as the spec file and the CLI give them
        import importlib

        from mlyard.core.specs.common import mappings_from_pairs

        module, model = kind.spec.split(":")
        spec = mappings_from_pairs(getattr(importlib.import_module(module), model), spec)
    state_type = fr.state.type.value if fr.state else None
    st = status(kind, state_type, started, closing)
    message = fr.state.message if fr.state else None
    if st == "COMPLETE" and kind.complete_reason and message and message.startswith("COMPLETE ("):
        st = message
    cause = None
    if st in (kind.fail, "CREATE FAILED", "STOPPED", "STOP IN PROGRESS") and fr.state and fr.state.message:
        cause = fr.state.message.removeprefix("Flow run encountered an exception: ")
    secs = fr.estimated_run_time.total_seconds() if fr.estimated_run_time else 0.0
    created = fr.created or datetime.now(timezone.utc)
    return RunInfo(str(fr.id), spec.get("name", fr.name), st, cause, round(secs, 1), created.isoformat(timespec="seconds"),
                   fr.work_pool_name, fr.name, parent_id, spec, project_of_tags(fr.tags or ()))


def project_filter(projects: list[str] | None):
    """Prefect's filter of the flow runs of `projects` (None: every run) by their project tag; for `default`,
    also the runs from before projects, which have no tags."""
    from prefect.client.schemas.filters import FlowRunFilterTags

    if projects is None:
        return None
    tags = project_tags(projects) or [f"{PROJECT_TAG}-"]  # no project at all: a tag no run has
    if DEFAULT_PROJECT in projects:
        return FlowRunFilterTags(operator="or_", any_=tags, is_null_=True)
    return FlowRunFilterTags(any_=tags)


def _visible(fr: Any) -> bool:
    projects = visible_projects()
    return projects is None or project_of_tags(fr.tags or ()) in projects


def visible_projects() -> list[str] | None:
    """The projects whose runs this call sees: the one it chose, else all of the actor's (None: all)."""
    actor = current()
    if actor.project is not None:
        return [actor.acting_project()]
    return actor.projects()


def active_in_project(project: str) -> list[str]:
    """Ids of the project's flow runs that have not ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    active = [StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED, StateType.RUNNING, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(any_=project_tags([project])),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))), limit=20)
    return [str(r.id) for r in runs]


def started_in(client, marker: str | None, flow_runs: list) -> set[str]:
    """Ids of the flow runs among `flow_runs` in which the step `marker` has started: the label the step
    sets as it starts (mlyard.tasks.orchestration.step_started), else a task run named like it (runs made
    before the label, or whose label could not be written)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    if not flow_runs or not marker:
        return set()
    labelled = {str(r.id) for r in flow_runs if (r.labels or {}).get(STARTED_LABEL + marker)}
    rest = [r.id for r in flow_runs if str(r.id) not in labelled]
    if not rest:
        return labelled
    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=rest)),
        task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=marker)),
    )
    return labelled | {str(t.flow_run_id) for t in runs if t.state and t.state.type.value != "PENDING"}


def _parents(client, runs: list) -> dict[str, str]:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    task_ids = [r.parent_task_run_id for r in runs if r.parent_task_run_id]
    if not task_ids:
        return {}
    tasks = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=task_ids)))
    by_task = {t.id: str(t.flow_run_id) for t in tasks}
    return {str(r.id): by_task[r.parent_task_run_id] for r in runs if r.parent_task_run_id in by_task}


def list_runs(kind: Kind, limit: int = 100, active_only: bool = False) -> list[RunInfo]:
    """Newest first. `active_only`: only those not finished (queued, preparing, running, stopping)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = FlowRunFilter(tags=project_filter(visible_projects()))
    if active_only:
        active = [StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED, StateType.RUNNING, StateType.CANCELLING]
        run_filter.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=active))
    runs = []
    with get_client(sync_client=True) as client:
        while len(runs) < limit:  # the API serves at most 200 a page
            page = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[kind.flow])),
                                         flow_run_filter=run_filter, sort=FlowRunSort.START_TIME_DESC,
                                         limit=min(200, limit - len(runs)), offset=len(runs))
            runs += page
            if len(page) < 200:
                break
        running = [r for r in runs if r.state and r.state.type.value == "RUNNING"]
        started = started_in(client, kind.marker, runs)
        closing = started_in(client, kind.closing, running)
        parents = _parents(client, runs)
    return [_info(kind, r, str(r.id) in started, parents.get(str(r.id)), str(r.id) in closing) for r in runs]


def get_run(kind: Kind, run_id: str) -> RunInfo:
    """The run of this kind with id `run_id`, or the one whose id starts with it (as the first 8 characters
    a table shows): an ambiguous prefix is refused with its candidates."""
    import httpx
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if _PREFIX.match(run_id) and not _UUID.match(run_id):
            try:
                run_id = _by_prefix(client, kind, run_id.lower())
            except httpx.TransportError as exc:
                raise PlatformUnreachable(str(client.api_url), f"{type(exc).__name__}: {exc}"[:300]) from exc
        try:
            fr = client.read_flow_run(run_id)
        except Exception as exc:  # not found, or a malformed id (422); else Prefect is away, not the run
            raise not_found_or_away(exc, kind.not_found(run_id), str(client.api_url)) from exc
        if fr.flow_id is None or client.read_flow(fr.flow_id).name != kind.flow:
            raise kind.not_found(run_id)
        if not _visible(fr):
            raise kind.not_found(run_id)  # another project's run does not exist for this caller
        info = _info(kind, fr, bool(started_in(client, kind.marker, [fr])), _parents(client, [fr]).get(str(fr.id)),
                     bool(started_in(client, kind.closing, [fr])))
        from mlyard.prefect_setup import LOCAL_POOL

        if fr.state is not None and fr.state.type.value == "SCHEDULED" and fr.work_pool_name == LOCAL_POOL:
            from mlyard.core.settings import Settings
            from mlyard.tasks import local_line

            info.waiting = local_line.place_in_line(client, LOCAL_POOL, info.id, local_line.places(Settings()))
        return info


def not_found_or_away(exc: Exception, not_found: Exception, api_url: str) -> Exception:
    """What a failed read of one flow run means: the run is not there (Prefect said 404, or 422 for an id
    it cannot read), or Prefect is unreachable (a refused connection, a timeout, a 5xx)."""
    import httpx
    from prefect.exceptions import ObjectNotFound

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, ObjectNotFound) or status in (404, 422):
        return not_found
    if isinstance(exc, (httpx.TransportError, OSError)) or (status is not None and status >= 500):
        return PlatformUnreachable(api_url, f"{type(exc).__name__}: {exc}"[:300])
    return not_found


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_PREFIX = re.compile(r"^[0-9a-fA-F]{4,8}(-[0-9a-fA-F-]{0,27})?$")  # at least 4 characters of an id


def _by_prefix(client: Any, kind: Kind, prefix: str) -> str:
    """The one id of this kind's runs that starts with `prefix` (Prefect filters ids by value only, so the
    flow's runs are read a page of ids at a time)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter

    found: list[str] = []
    offset = 0
    while True:
        page = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[kind.flow])), limit=200,
                                     offset=offset, flow_run_filter=FlowRunFilter(tags=project_filter(visible_projects())))
        found += [str(r.id) for r in page if str(r.id).startswith(prefix)]
        if len(page) < 200 or len(found) > 5:
            break
        offset += 200
    if len(found) == 1:
        return found[0]
    if not found:
        raise kind.not_found(prefix)
    raise SpecError("id", prefix, f"a prefix of one {kind.noun} only; it starts {len(found)}"
                                  f"{'+' if len(found) > 5 else ''}: {', '.join(found[:5])}")


def stop_run(kind: Kind, run_id: str, reason: str = "stopped by user") -> RunInfo:
    """Stop a run (its processes are ended); it becomes STOPPED."""
    from mlyard.tasks.orchestration import cancel_flow_run

    info = get_run(kind, run_id)
    current().need(info.project, "editor", f"stopping a {kind.noun}", lambda: kind.not_found(run_id))
    if info.status not in ACTIVE_STATUSES:
        return info
    cancel_flow_run(info.id, reason)
    return get_run(kind, info.id)


def children(run_id: str, flow: str) -> list[str]:
    """Ids of the subflow runs of `flow` that the flow run `run_id` started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                                     flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
    return [str(r.id) for r in runs]


def delete_flow_runs(ids: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for i in ids:
            try:
                client.delete_flow_run(i)
            except ObjectNotFound:
                pass
