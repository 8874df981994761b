"""Schedules from Python (and the CLI's `mlyard schedules`): cron or interval runs of a lifecycle
deployment (or a pipeline), with a window, catch-up and a concurrency limit. The scheduler of
`mlyard up` (tasks/scheduling.py) creates the runs; this module checks, records and reads.

    import mlyard.schedules as schedules

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

from core.connection import connect
from core.errors import SpecError
from core.names import FLOW_BATCH, FLOW_EVALUATE, FLOW_TRAIN, FLOW_TUNE
from core.specs.schedule import ScheduleSpec
from mlyard.api import load as _spec

PREVIEW_COUNT = 5


def _store():
    from registry.catalog import Catalog
    from registry.schedules import Schedules

    return Schedules(Catalog(connect().catalog_db_url))


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
    from schedules.cron import CronError, fire_times, parse

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

SPEC_MODELS = {FLOW_TRAIN: "TrainingSpec", FLOW_TUNE: "TuningSpec", FLOW_BATCH: "BatchInferenceSpec",
               FLOW_EVALUATE: "EvaluationSpec"}


def _check_trigger(spec: ScheduleSpec) -> None:
    from schedules.cron import CronError, parse

    if spec.cron is not None:
        try:
            schedule = parse(spec.cron, spec.timezone)
        except CronError as exc:
            raise SpecError("cron", spec.cron, exc.reason + (f" (the {exc.field} field {exc.value!r})"
                                                             if exc.field else "")) from exc
        # strictly after the start, as the scheduler and Kubeflow count (a window in the past is a
        # backfill, which catch-up runs), else from now
        after = spec.start_time if spec.start_time else datetime.now(timezone.utc)
        nxt = schedule.next_after(after)
        if nxt is None:
            raise SpecError("cron", spec.cron, "an expression that fires: this one never does (see `mlyard schedules "
                                               "preview`)")
        if spec.end_time is not None and nxt > spec.end_time:
            raise SpecError("end_time", spec.end_time.isoformat(), f"a time after the first fire time "
                                                                   f"({nxt.isoformat()}): it would never run")


def _check_parameters(spec: ScheduleSpec, deployment: Any, base: Path, cluster: bool = False,
                      echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Parameters the deployment does not take, lacks, or that do not make a valid spec; the parameters
    to store, relative local paths of an mlyard spec made absolute against `base` (as a submitted run's
    are), placeholders kept. For a deployment on a Kubernetes pool (`cluster`), local inputs are uploaded
    and named by their upload (`_for_pods`)."""
    from prefect.utilities.schema_tools import validate

    from schedules.planning import render

    schema = deployment.parameter_openapi_schema or {}
    props = schema.get("properties", {})
    for key in spec.parameters:
        if props and key not in props:
            raise SpecError(f"parameters.{key}", spec.parameters[key],
                            f"a parameter of {spec.deployment}: it takes {', '.join(props) or 'none'}")
    for key in schema.get("required", []):
        if key not in spec.parameters:
            raise SpecError("parameters", sorted(spec.parameters), f"the required parameter {key!r} of "
                                                                   f"{spec.deployment}")
    sample = render(spec.parameters, int(time.time()))
    errors = validate(sample, schema, raise_on_error=False, preprocess=True)
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path)
        raise SpecError(f"parameters.{where}" if where else "parameters", e.instance, e.message)
    model_name = SPEC_MODELS.get(spec.deployment.split("/")[0] if spec.deployment else "")
    stored = dict(spec.parameters)
    if model_name and isinstance(sample.get("spec"), dict):
        import core.specs as specs
        from core.specs.common import load_spec
        from core.uris import absolute

        try:
            loaded = load_spec(getattr(specs, model_name), sample["spec"], "parameters.spec")
        except SpecError as exc:
            raise SpecError(f"parameters.spec.{exc.field}", exc.value, exc.expected) from exc
        before, after = loaded.model_dump(mode="json"), loaded.resolved(base).model_dump(mode="json")
        raw = dict(stored["spec"])
        for key, value in raw.items():
            if before.get(key) == after.get(key):
                continue
            if isinstance(value, str):
                raw[key] = absolute(value, base)
            elif isinstance(value, dict):
                raw[key] = {k: absolute(v, base) if before[key].get(k) != after[key].get(k) else v
                            for k, v in value.items()}
        stored["spec"] = _for_pods(raw, loaded.resolved(base), echo) if cluster else raw
    return stored


INPUTS = frozenset({"source_uri", "checkpoint_input_uri", "input_uri", "model"})  # and each of `datasets`


def _for_pods(raw: dict[str, Any], loaded: Any, echo: Callable[[str], None]) -> dict[str, Any]:
    """`raw` (the stored spec, placeholders kept) with each local input replaced by its upload. A local
    input whose path has a placeholder names another file at every run, which cannot be sent now: refused
    before anything is sent."""
    from core.settings import Settings
    from core.specs import is_mlflow_uri, is_registry_ref
    from core.uris import parse_uri
    from mlyard.uploads import for_cluster

    def placeholders(raw_part: Any, where: str, key: str, parent: str) -> None:
        if isinstance(raw_part, dict):
            for k, v in raw_part.items():
                placeholders(v, f"{where}.{k}", k, key)
        elif (isinstance(raw_part, str) and "{{" in raw_part and (key in INPUTS or parent == "datasets")
              and not (key == "model" and (is_registry_ref(raw_part) or is_mlflow_uri(raw_part)))
              and parse_uri(raw_part, where).kind == "local"):
            raise SpecError(where, raw_part, "a URI of the storage the cluster's pods read (s3://, obs:// or nas://): "
                            "a path on this machine with a placeholder names another file at every run, so it "
                            "cannot be uploaded when the schedule is saved")

    placeholders(raw, "parameters.spec", "", "")
    try:
        shipped = for_cluster(loaded, Settings(), echo).model_dump(mode="json")
    except SpecError as exc:
        raise SpecError(f"parameters.spec.{exc.field}", exc.value, exc.expected) from exc
    before = loaded.model_dump(mode="json")

    def merge(raw_part: Any, old: Any, new: Any) -> Any:
        if isinstance(raw_part, dict) and isinstance(old, dict) and isinstance(new, dict):
            return {k: merge(v, old.get(k), new.get(k)) for k, v in raw_part.items()}
        return raw_part if old == new else new

    return merge(raw, before, shipped)


def create(spec_in: ScheduleSpec | dict | str | Path, *, sets: dict[str, Any] | None = None,
           wait_seconds: float = 10.0, echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Check and save a schedule; the scheduler confirms it (ENABLED or DISABLED) on its next pass. `echo`
    says what is uploaded for a deployment on a Kubernetes pool."""
    spec: ScheduleSpec = _spec(ScheduleSpec, spec_in, sets)
    _check_trigger(spec)
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
        parameters = _check_parameters(spec, deployment, Path.cwd(), cluster, echo)
    watermark = int(spec.start_time.timestamp()) if spec.start_time else int(time.time())
    saved = spec.model_dump(mode="json")
    saved["parameters"] = parameters
    if spec.pipeline is not None:
        saved["run_parameters"] = dict(spec.parameters["spec"]["parameters"])
    store.create(spec.name, saved, str(deployment.id), "CREATE REQUESTED", watermark)
    deadline = time.monotonic() + wait_seconds
    view = show(spec.name, runs=0)
    while view["status"] == "CREATE REQUESTED" and time.monotonic() < deadline:
        time.sleep(0.2)
        view = show(spec.name, runs=0)
    return view


def _pipeline_target(spec: ScheduleSpec) -> ScheduleSpec:
    """A pipeline schedule runs the pipeline-run deployment; its parameters are the pipeline's run
    parameters, checked against its inputs (and what can run here) now."""
    from core.names import FLOW_PIPELINE_RUN
    from core.specs.pipeline import PipelineRunSpec
    from registry.catalog import Catalog
    from registry.pipelines import Pipelines
    from schedules.planning import render
    from tasks.pipelines import check_run

    settings = connect()
    run = {"name": f"{spec.name[:33]}-{{{{ slot_name }}}}", "description": f"run by schedule {spec.name}",
           "pipeline": spec.pipeline, "parameters": spec.parameters, "scheduled_time": "{{ slot_time }}"}
    sample = PipelineRunSpec.model_validate(render(run, int(time.time())))
    check_run(Pipelines(Catalog(settings.catalog_db_url)), sample, local=not settings.kfp_host)
    return spec.model_copy(update={"deployment": f"{FLOW_PIPELINE_RUN}/local", "parameters": {"spec": run}})


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
    return {"name": record.name, "status": _status(record), "trigger": _trigger_text(spec),
            "target": f"pipeline {spec['pipeline']}" if spec.get("pipeline") else spec.get("deployment"),
            "max_concurrency": spec.get("max_concurrency", 1), "catchup": spec.get("catchup", True),
            "reason": record.reason}


def list_schedules() -> list[dict[str, Any]]:
    return [_row(r) for r in _store().all()]


def show(name: str, *, runs: int = 10, upcoming: int = PREVIEW_COUNT) -> dict[str, Any]:
    """A schedule: its settings, how its trigger reads, its last `runs` runs (with their Prefect
    states) and its next `upcoming` fire times."""
    from registry.catalog import Catalog
    from registry.schedules import Schedules
    from schedules.cron import fire_times
    from tasks.scheduling import plan_of

    settings = connect()
    store = Schedules(Catalog(settings.catalog_db_url))
    record = store.get(name)
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
    from core.links import links

    states: dict[str, str] = {}
    started: dict[str, float] = {}  # when each run began RUNNING (Prefect's start_time)
    ids = [s.flow_run_id for s in slots if s.flow_run_id]
    if ids:
        from tasks.orchestration import flow_runs_by_id

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
    store = _store()
    rec = store.get(name)
    if rec.status == "CREATE FAILED":
        raise SpecError("schedule", name, f"a schedule that was created ({rec.reason}); copy it once fixed")
    store.set_status(name, "ENABLED")
    return show(name, runs=0)


def disable(name: str) -> dict[str, Any]:
    """Disable a schedule: no new runs (a run created ahead of a slot still to come is cancelled);
    runs already going go on."""
    from tasks.scheduling import Scheduler

    store = _store()
    rec = store.get(name)
    if rec.status == "CREATE FAILED":
        raise SpecError("schedule", name, f"a schedule that was created ({rec.reason})")
    store.set_status(name, "DISABLED")
    with _client() as client:
        Scheduler(store, client).withdraw(rec, time.time())
    return show(name, runs=0)


def copy(name: str, new_name: str, *, sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new schedule with the same settings (and `sets` merged in), checked like any other."""
    spec = dict(_store().get(name).spec)
    spec["name"] = new_name
    if spec.get("pipeline"):  # as given: the run parameters, not the pipeline-run spec made of them
        spec["deployment"], spec["parameters"] = None, spec.pop("run_parameters", {})
    spec.pop("run_parameters", None)
    return create(spec, sets=sets)


def delete(name: str) -> dict[str, Any]:
    """Delete a schedule; refused while a run it created is still going (its slots' runs are looked up first)."""
    from tasks.scheduling import PassReport, Scheduler

    store = _store()
    rec = store.get(name)
    with _client() as client:
        Scheduler(store, client, start_timeout_seconds=float("inf")).refresh([rec], PassReport(), time.time())
    store.delete(name)
    return {"deleted": name}
