"""What a schedule is checked against before it is saved (mlyard/schedule.py): its trigger fires, the
deployment takes its parameters and they make a valid spec of that action; its local inputs named as the
runs will read them (made absolute, or uploaded for a Kubernetes pool's deployment or a team member's
schedule); and a team member's, what their project allows, as a run they start would be (mlyard/member_runs.py).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mlyard.core.errors import SpecError
from mlyard.core.names import FLOW_BATCH, FLOW_EVALUATE, FLOW_TRAIN, FLOW_TUNE
from mlyard.core.specs.schedule import ScheduleSpec

SPEC_MODELS = {FLOW_TRAIN: "TrainingSpec", FLOW_TUNE: "TuningSpec", FLOW_BATCH: "BatchInferenceSpec",
               FLOW_EVALUATE: "EvaluationSpec"}


def check_trigger(spec: ScheduleSpec) -> None:
    from mlyard.schedules.cron import CronError, parse

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


def check_parameters(spec: ScheduleSpec, deployment: Any) -> None:
    """Refuse parameters the deployment does not take, lacks, or whose values its schema refuses (rendered
    as at a fire time)."""
    from prefect.utilities.schema_tools import validate

    from mlyard.schedules.planning import render

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
    errors = validate(render(spec.parameters, int(time.time())), schema, raise_on_error=False, preprocess=True)
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path)
        raise SpecError(f"parameters.{where}" if where else "parameters", e.instance, e.message)


def sample_spec(spec: ScheduleSpec) -> Any:
    """The mlyard spec a run of the schedule gets (its placeholders rendered as now), checked; None for a
    deployment that is not one of mlyard's lifecycle actions."""
    import mlyard.core.specs as specs
    from mlyard.core.specs.common import load_spec
    from mlyard.schedules.planning import render

    model_name = SPEC_MODELS.get(spec.deployment.split("/")[0] if spec.deployment else "")
    sample = render(spec.parameters, int(time.time()))
    if not model_name or not isinstance(sample.get("spec"), dict):
        return None
    try:
        return load_spec(getattr(specs, model_name), sample["spec"], "parameters.spec")
    except SpecError as exc:
        raise SpecError(f"parameters.spec.{exc.field}", exc.value, exc.expected) from exc


def localized(spec: ScheduleSpec, base: Path, upload: bool = False,
              echo: Callable[[str], None] = lambda line: None, area: str | None = None) -> dict[str, Any]:
    """The parameters to store: relative local paths of an mlyard spec made absolute against `base` (as a
    submitted run's are), placeholders kept; with `upload` (a deployment on a Kubernetes pool, a team
    member's schedule), local inputs uploaded and named by their upload (`_for_pods`; `area`: a member's
    project storage, which their runs read and write as it is)."""
    from mlyard.core.uris import absolute

    loaded, stored = sample_spec(spec), dict(spec.parameters)
    if loaded is None:
        return stored
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
    stored["spec"] = _for_pods(raw, loaded.resolved(base), echo, area) if upload else raw
    return stored


def member_may_schedule(spec: ScheduleSpec, project: str) -> None:
    """A team member schedules the runs they may start (mlyard/member_runs.py `member_flows`) with an mlyard spec:
    trainings, tunings, batch inferences and evaluations; anything else is an admin's."""
    from mlyard.core.access import current
    from mlyard.core.errors import Forbidden

    flow = (spec.deployment or "").split("/", 1)[0]
    if spec.pipeline is not None or flow not in SPEC_MODELS:
        what = f"pipeline {spec.pipeline}" if spec.pipeline else f"deployment {spec.deployment}"
        raise Forbidden(current().name, project, f"scheduling {what} (a member schedules trainings, tunings, batch "
                        "inferences and evaluations)", "admin", None)


def for_member(spec: ScheduleSpec, project: str) -> dict[str, Any]:
    """A team member's schedule's parameters, checked as the run they would start now is (mlyard/member_runs.py
    `member_parameters`: their project's storage, quota, models, templates and experiments), with an
    experiment left at its kind's default made the project's own."""
    from mlyard.member_runs import member_parameters
    from mlyard.schedules.planning import render

    member_may_schedule(spec, project)
    sample = render(spec.parameters, int(time.time()))
    checked = member_parameters(spec.deployment or "", sample, project)[0]["spec"]
    stored = {**spec.parameters, "spec": dict(spec.parameters.get("spec") or {})}
    for key in ("experiment",):  # the project's default experiment, as its runs log to
        if checked.get(key) != sample["spec"].get(key):
            stored["spec"][key] = checked[key]
    training = checked.get("training")
    if isinstance(training, dict) and isinstance(stored["spec"].get("training"), dict) and \
            training.get("experiment") != sample["spec"]["training"].get("experiment"):
        stored["spec"]["training"] = {**stored["spec"]["training"], "experiment": training["experiment"]}
    return stored


INPUTS = frozenset({"source_uri", "checkpoint_input_uri", "input_uri", "model"})  # and each of `datasets`


def _for_pods(raw: dict[str, Any], loaded: Any, echo: Callable[[str], None], area: str | None = None
              ) -> dict[str, Any]:
    """`raw` (the stored spec, placeholders kept) with each local input replaced by its upload. A local
    input whose path has a placeholder names another file at every run, which cannot be sent now: refused
    before anything is sent."""
    from mlyard.core.settings import Settings
    from mlyard.core.specs import is_mlflow_uri, is_registry_ref
    from mlyard.core.uris import parse_uri
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
        shipped = for_cluster(loaded, Settings(), echo, area).model_dump(mode="json")
    except SpecError as exc:
        raise SpecError(f"parameters.spec.{exc.field}", exc.value, exc.expected) from exc
    before = loaded.model_dump(mode="json")

    def merge(raw_part: Any, old: Any, new: Any) -> Any:
        if isinstance(raw_part, dict) and isinstance(old, dict) and isinstance(new, dict):
            return {k: merge(v, old.get(k), new.get(k)) for k, v in raw_part.items()}
        return raw_part if old == new else new

    return merge(raw, before, shipped)
