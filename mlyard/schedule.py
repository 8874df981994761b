"""Schedules from Python (and the CLI's `mlyard schedules`): cron or interval runs of a lifecycle
deployment (or a pipeline), with a window, catch-up and a concurrency limit. The scheduler of
`mlyard up` (tasks/scheduling.py) creates the runs; this module checks, records and reads.

    import mlyard.schedule as schedules

    schedules.preview("0 0 2 * * *", tz="Asia/Seoul")          # the next fire times, and how it was read
    schedules.create("nightly.yaml")                           # checked against the deployment first
    schedules.disable("nightly"); schedules.enable("nightly")  # catch-up runs what was missed meanwhile
    schedules.show("nightly")                                  # past runs (Prefect states) and next ones

A schedule is checked before it is saved: the expression as robfig/cron reads it, that it fires at
all within its window, that the deployment exists and takes these parameters (and, for mlyard's own
flows, that they make a valid spec of that action); a bad one fails with one line naming the field.
A schedule of a deployment on a Kubernetes pool names its inputs as the pods can read them: local paths
are uploaded once, when it is saved (mlyard/uploads.py, as `--submit` does), or refused with the reason.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mlyard.api import load as _spec
from mlyard.core.access import current
from mlyard.core.connection import connect
from mlyard.core.errors import ScheduleNotFound, SpecError
from mlyard.core.specs.schedule import ScheduleSpec
from mlyard.runs import visible_projects
from mlyard.schedule_checks import (
    check_parameters,
    check_trigger,
    for_member,
    localized,
    member_may_schedule,
    sample_spec,
)
from mlyard.teams import acting_editor, acting_or_none, audited
from mlyard.warm_api import member_api, member_command, post

PREVIEW_COUNT = 5


def _store():
    from mlyard.registry.catalog import shared
    from mlyard.registry.schedules import Schedules

    return Schedules(shared(connect().catalog_db_url))


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _iso(t: datetime) -> str:
    return t.isoformat()


# -- preview ---------------------------------------------------------------------------------------

def preview(expression: str, *, start: datetime | str | None = None, tz: str = "UTC",
            count: int = PREVIEW_COUNT) -> dict[str, Any]:
    """How an expression is read and its next `count` fire times after `start` (default: now), as
    ISO-8601 instants with their offsets. An expression that never fires says so, with no times."""
    from mlyard.schedules.cron import CronError, fire_times, parse

    if count < 1 or count > 1000:
        raise SpecError("--count", count, "a number of fire times from 1 to 1000")
    try:
        schedule = parse(expression, tz)
    except CronError as exc:
        raise SpecError("cron", expression, exc.reason + (f" (the {exc.field} field {exc.value!r})"
                                                          if exc.field else "")) from exc
    except ValueError as exc:  # an unknown --tz
        raise SpecError("--tz", tz, str(exc)) from exc
    if isinstance(start, str):
        try:
            start = datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError as exc:
            raise SpecError("--start", start, "an ISO-8601 time, e.g. 2026-12-01T09:00:00+09:00") from exc
    after = start or datetime.now(timezone.utc)
    if after.tzinfo is None:
        after = after.replace(tzinfo=timezone.utc)
    times = [_iso(t) for t in fire_times(schedule, after, limit=count)]
    zone_name = getattr(getattr(schedule, "tz", None), "key", None) or tz
    out: dict[str, Any] = {"expression": expression, "read_as": schedule.reading, "timezone": zone_name,
                           "after": _iso(after), "next": times}
    if not times:
        out["never_fires"] = "it never fires (no matching time within five years of the start)"
    return out


# -- create ----------------------------------------------------------------------------------------

def create(spec_in: ScheduleSpec | dict | str | Path, *, sets: dict[str, Any] | None = None,
           wait_seconds: float = 10.0, echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Check and save a schedule in the project the caller acts in (an editor's); the scheduler confirms it
    (ENABLED or DISABLED) on its next pass, and its runs are that project's and the caller's. `echo` says
    what is uploaded: for a deployment on a Kubernetes pool, and for a team member (their key), whose
    schedule the platform saves as them."""
    spec: ScheduleSpec = _spec(ScheduleSpec, spec_in, sets)
    check_trigger(spec)
    if (url := member_api()) is not None:  # the platform saves it, as them; their local inputs uploaded first
        parameters = spec.parameters
        if spec.pipeline is None and (sample := sample_spec(spec)) is not None:
            area = post(url, "/v1/queries/run_check", {"flow": (spec.deployment or "").split("/", 1)[0],
                                                        "spec": sample.resolved(Path.cwd()).model_dump(mode="json")})
            parameters = localized(spec, Path.cwd(), upload=True, echo=echo, area=area["storage"])
        return post(url, "/v1/commands/schedules_create", {"spec": {**spec.model_dump(mode="json"),
                                                                    "parameters": parameters},
                                                           "wait_seconds": wait_seconds})
    return _create(spec=spec, wait_seconds=wait_seconds, echo=echo)


@audited("schedule.create", lambda a: f"schedule {a['spec'].name}", lambda a: acting_or_none(current()))
def _create(spec: ScheduleSpec, wait_seconds: float, echo: Callable[[str], None]) -> dict[str, Any]:
    actor = current()
    project = acting_editor("creating a schedule")
    if not actor.admin:
        member_may_schedule(spec, project)
    store = _store()
    if spec.pipeline is not None:
        spec = _pipeline_target(spec)
    with _client() as client:
        try:
            deployment = client.read_deployment_by_name(spec.deployment or "")
        except Exception as exc:  # noqa: BLE001 - ObjectNotFound: name what exists
            if type(exc).__name__ != "ObjectNotFound":
                raise
            flows = {f.id: f.name for f in client.read_flows()}
            names = sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in client.read_deployments())
            raise SpecError("deployment", spec.deployment, f"a deployment of this platform: {', '.join(names)}") from exc
        cluster = bool(deployment.work_pool_name) and client.read_work_pool(
            deployment.work_pool_name).type == "kubernetes"
        check_parameters(spec, deployment)
        parameters = localized(spec, Path.cwd(), cluster, echo)
    if not actor.admin:  # as the run they would start now: their project's storage, quota, models, experiments
        parameters = for_member(spec.model_copy(update={"parameters": parameters}), project)
    watermark = int(spec.start_time.timestamp()) if spec.start_time else int(time.time())
    saved = spec.model_dump(mode="json")
    saved["parameters"] = parameters
    if spec.pipeline is not None:
        saved["run_parameters"] = dict(spec.parameters["spec"]["parameters"])
    store.create(spec.name, saved, str(deployment.id), "CREATE REQUESTED", watermark, project, actor.name)
    deadline = time.monotonic() + wait_seconds
    view = show(spec.name, runs=0)
    while view["status"] == "CREATE REQUESTED" and time.monotonic() < deadline:
        time.sleep(0.2)
        view = show(spec.name, runs=0)
    return view


def _pipeline_target(spec: ScheduleSpec) -> ScheduleSpec:
    """A pipeline schedule runs the pipeline-run deployment; its parameters are the pipeline's run
    parameters, checked against its inputs (and what can run here) now."""
    from mlyard.core.names import FLOW_PIPELINE_RUN, deployment
    from mlyard.core.specs.pipeline import PipelineRunSpec
    from mlyard.registry.catalog import shared
    from mlyard.registry.pipelines import Pipelines
    from mlyard.schedules.planning import render
    from mlyard.tasks.pipelines import check_run

    settings = connect()
    run = {"name": f"{spec.name[:33]}-{{{{ slot_name }}}}", "description": f"run by schedule {spec.name}",
           "pipeline": spec.pipeline, "parameters": spec.parameters, "scheduled_time": "{{ slot_time }}"}
    sample = PipelineRunSpec.model_validate(render(run, int(time.time())))
    check_run(Pipelines(shared(settings.catalog_db_url)), sample, local=not settings.kfp_host)
    return spec.model_copy(update={"deployment": deployment(FLOW_PIPELINE_RUN), "parameters": {"spec": run}})


# -- reads -----------------------------------------------------------------------------------------

def _status(record, now: float | None = None) -> str:
    end = record.spec.get("end_time")
    if record.status == "ENABLED" and end:
        end_at = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
        if (now or time.time()) > end_at.timestamp():
            return "ENABLED(EXPIRED)"
    return record.status


def _trigger_text(spec: dict[str, Any]) -> str:
    if spec.get("cron"):
        return spec["cron"]
    iv = spec.get("interval") or {}
    return f"every {iv.get('every')} {iv.get('unit', 'minutes')}"


def _row(record) -> dict[str, Any]:
    spec = record.spec
    return {"name": record.name, "project": record.project, "owner": record.owner, "status": _status(record),
            "trigger": _trigger_text(spec),
            "target": f"pipeline {spec['pipeline']}" if spec.get("pipeline") else spec.get("deployment"),
            "max_concurrency": spec.get("max_concurrency", 1), "catchup": spec.get("catchup", True),
            "reason": record.reason}


def list_schedules() -> list[dict[str, Any]]:
    """The schedules of the caller's projects."""
    if (url := member_api()) is not None:
        return post(url, "/v1/queries/schedules_list", {})
    return [_row(r) for r in _store().all(visible_projects())]


def in_reach(store: Any, name: str, role: str = "viewer", action: str = "reading a schedule") -> Any:
    """The schedule `name` when the caller's role in its project allows `action` (one of a project they
    have no role in does not exist for them)."""
    record = store.get(name)
    current().need(record.project, role, action, lambda: ScheduleNotFound(name))
    return record


def show(name: str, *, runs: int = 10, upcoming: int = PREVIEW_COUNT) -> dict[str, Any]:
    """A schedule: its settings, how its trigger reads, its last `runs` runs (with their Prefect
    states) and its next `upcoming` fire times."""
    from mlyard.registry.catalog import shared
    from mlyard.registry.schedules import Schedules
    from mlyard.schedules.cron import fire_times
    from mlyard.tasks.scheduling import plan_of

    if (url := member_api()) is not None:
        return post(url, "/v1/queries/schedules_show", {"name": name, "runs": runs})
    settings = connect()
    store = Schedules(shared(settings.catalog_db_url))
    record = in_reach(store, name)
    view = _row(record)
    plan = plan_of(record)
    view.update({"description": record.spec.get("description", ""), "read_as": plan.trigger.reading,
                 "timezone": record.spec.get("timezone", "UTC"), "start_time": record.spec.get("start_time"),
                 "end_time": record.spec.get("end_time"), "when_busy": record.spec.get("when_busy", "wait"),
                 "parameters": record.spec.get("parameters", {}), "slots": store.counts(record.id),
                 "missed": record.missed})
    now = datetime.now(timezone.utc)
    after = max(now, plan.policy.start) if plan.policy.start else now  # strictly after start_time
    end = plan.policy.end
    view["next"] = [] if record.status in ("DISABLED", "CREATE FAILED") else [
        t.isoformat() for t in fire_times(plan.trigger, after, end, limit=upcoming)]
    if runs:
        slots = store.slots(record.id, ["STARTED", "ENDED", "SKIPPED", "WAITING"], limit=runs, newest_first=True)
        done = _runs(slots, settings)
        # a run made ahead of its slot (the scheduler's lead) is an upcoming one, not a past one
        view["runs"] = [r for r in done if datetime.fromisoformat(r["slot"]) <= now]
        view["queued"] = [r for r in done if datetime.fromisoformat(r["slot"]) > now]
    return view


def _runs(slots, settings) -> list[dict[str, Any]]:
    from mlyard.core.links import links

    states: dict[str, str] = {}
    started: dict[str, float] = {}  # when each run began RUNNING (Prefect's start_time)
    ids = [s.flow_run_id for s in slots if s.flow_run_id]
    if ids:
        from mlyard.tasks.orchestration import flow_runs_by_id

        with _client() as client:
            found = flow_runs_by_id(client, ids)
        states = {i: fr.state.name if fr.state else "?" for i, fr in found.items()}
        started = {i: fr.start_time.timestamp() for i, fr in found.items() if fr.start_time}
    out = []
    for s in slots:
        began = started.get(s.flow_run_id or "")
        out.append({"slot": datetime.fromtimestamp(s.slot_epoch, timezone.utc).isoformat(), "slot_state": s.state,
                    "flow_run_id": s.flow_run_id or "",
                    "run_state": states.get(s.flow_run_id or "", "(deleted)" if s.flow_run_id else ""),
                    # from the slot to the run's start (not to its creation, which the lead puts ahead)
                    "lateness_seconds": round(began - s.slot_epoch, 3) if began is not None else None,
                    "url": links(settings, s.flow_run_id).get("prefect", "") if s.flow_run_id else ""})
    return out


# -- changes ---------------------------------------------------------------------------------------

def enable(name: str) -> dict[str, Any]:
    """Enable a schedule; with catch-up on, the slots missed while it was disabled run (oldest first)."""
    return member_command("schedules_enable", name=name) or _enable(name=name)


@audited("schedule.enable", lambda a: f"schedule {a['name']}", lambda a: acting_or_none(current()))
def _enable(name: str) -> dict[str, Any]:
    store = _store()
    rec = in_reach(store, name, "editor", "enabling a schedule")
    if rec.status == "CREATE FAILED":
        raise SpecError("schedule", name, f"a schedule that was created ({rec.reason}); copy it once fixed")
    store.set_status(name, "ENABLED")
    return show(name, runs=0)


def disable(name: str) -> dict[str, Any]:
    """Disable a schedule: no new runs (a run created ahead of a slot still to come is cancelled);
    runs already going go on."""
    return member_command("schedules_disable", name=name) or _disable(name=name)


@audited("schedule.disable", lambda a: f"schedule {a['name']}", lambda a: acting_or_none(current()))
def _disable(name: str) -> dict[str, Any]:
    from mlyard.tasks.scheduling import Scheduler

    store = _store()
    rec = in_reach(store, name, "editor", "disabling a schedule")
    if rec.status == "CREATE FAILED":
        raise SpecError("schedule", name, f"a schedule that was created ({rec.reason})")
    store.set_status(name, "DISABLED")
    with _client() as client:
        Scheduler(store, client).withdraw(rec, time.time())
    return show(name, runs=0)


def copy(name: str, new_name: str, *, sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new schedule with the same settings (and `sets` merged in), checked like any other, in the project
    the caller acts in."""
    if (made := member_command("schedules_copy", name=name, new_name=new_name, sets=sets)) is not None:
        return made
    spec = dict(in_reach(_store(), name, "editor", "copying a schedule").spec)
    spec["name"] = new_name
    if spec.get("pipeline"):  # as given: the run parameters, not the pipeline-run spec made of them
        spec["deployment"], spec["parameters"] = None, spec.pop("run_parameters", {})
    spec.pop("run_parameters", None)
    return create(spec, sets=sets)


def delete(name: str) -> dict[str, Any]:
    """Delete a schedule (its project's owner's); refused while a run it created is still going (its slots'
    runs are looked up first)."""
    return member_command("schedules_delete", name=name) or _delete(name=name)


@audited("schedule.delete", lambda a: f"schedule {a['name']}", lambda a: acting_or_none(current()))
def _delete(name: str) -> dict[str, Any]:
    from mlyard.tasks.scheduling import PassReport, Scheduler

    store = _store()
    rec = in_reach(store, name, "owner", "deleting a schedule")
    with _client() as client:
        Scheduler(store, client, start_timeout_seconds=float("inf")).refresh([rec], PassReport(), time.time())
    store.delete(name)
    return {"deleted": name}
