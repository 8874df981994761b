"""A tuning's trial as a Prefect task: a training with the suggested hyperparameters, through the same
launch path as a training (tasks/training.py), pruned by the median rule (tuning/loop.py).

Locally the trial is a process of the tuning's flow run; with `trial_deployment` it is a flow run of
that deployment (a pod on the Kubernetes pool), followed through its MLflow metrics.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlyard.core.errors import TrainingFailed, TrainingStopped
from mlyard.core.metrics import MetricLineError, json_metric_values
from mlyard.core.names import TAG_PARENT_RUN_ID, TAG_TRIAL_NUMBER, TAG_TRIAL_STATE, TAG_TUNING_ID, TASK_TRIAL
from mlyard.core.specs import TrainingSpec, TuningSpec
from mlyard.registry.tracking import Tracking
from mlyard.tasks.orchestration import cancel_flow_run, step_started, submit
from mlyard.tasks.training import LOG_NAME, Inputs, close_run, launch, open_run, save_model
from mlyard.tuning import KatibState, objective_parsers
from mlyard.tuning.engine import RUN_ID_ATTR, Trial, parse_line
from mlyard.tuning.loop import Loop, Pruner, record_outcome

STATE_POLL_SECONDS = 0.2  # a trial's flow run: how often its state is read while the tuning waits
METRICS_POLL_SECONDS = 0.5  # and its metrics in MLflow (the median rule's input)


@dataclass
class TrialSetup:
    """What every trial of one tuning shares."""

    spec: TuningSpec
    base: TrainingSpec  # the training every trial runs, with the trial's hyperparameters on top
    inputs: Inputs  # staged once for every trial
    python: str
    parent_run: str  # the tuning's MLflow run
    tuning_id: str
    scratch: Path
    region: str
    engine_env: dict[str, str]


@task(name=TASK_TRIAL, cache_policy=NO_CACHE, task_run_name=TASK_TRIAL + "-{trial.number}")
def run_trial(setup: TrialSetup, loop: Loop, tracking: Tracking, trial: Trial) -> str:
    """One trial to its end; its outcome is recorded in the study. Returns its Katib state."""
    step_started(TASK_TRIAL)
    spec, number = setup.spec, trial.number
    tspec = setup.base.with_overrides({"name": f"{spec.name[:40]}-t{number}", "hyperparameters": dict(trial.params),
                                       "metrics_format": spec.metrics_format})
    tags = {TAG_PARENT_RUN_ID: setup.parent_run, TAG_TUNING_ID: setup.tuning_id, TAG_TRIAL_NUMBER: str(number)}
    pruner = Pruner(loop, trial)
    try:
        if spec.trial_deployment:
            state, reason, run_id = _as_flow_run(setup, tracking, tspec, tags, pruner)
        else:
            state, reason, run_id = _as_process(setup, tracking, tspec, tags, pruner)
    except Exception as exc:  # the engines failed around the trial: it FAILED, the tuning goes on
        state, reason, run_id = KatibState.FAILED, f"{type(exc).__name__}: {exc}", trial.user_attrs.get(RUN_ID_ATTR)
    return record_outcome(trial, spec, pruner, state, reason, run_id).value


def _as_process(setup: TrialSetup, tracking: Tracking, tspec: TrainingSpec, tags: dict[str, str], pruner: Pruner):
    spec, trial = setup.spec, pruner.trial
    tdir = setup.scratch / f"trial-{trial.number}"
    dirs = setup.inputs.workdirs(tdir)
    run_id = open_run(tracking, tspec, f"{setup.tuning_id}/trial-{trial.number}", kind="trial", tags=tags)
    trial.set_user_attr(RUN_ID_ATTR, run_id)
    parsers = objective_parsers(spec)
    names = list(spec.metric_regexes())
    unreadable: list[str] = []  # a JSON metrics line that failed the collection (Katib's rule)

    def on_line(line: str) -> None:
        if spec.metrics_format == "json":
            try:
                found, _ = json_metric_values(line, names)
            except MetricLineError as exc:
                unreadable.append(f"metrics collection failed: {exc}")
                return
        else:
            found = parse_line(parsers, line)
        if spec.objective.metric in found:
            pruner.report(found[spec.objective.metric])

    def should_stop() -> str | None:
        return unreadable[0] if unreadable else pruner.stop_reason()

    state, reason = KatibState.SUCCEEDED, None
    status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED"
    try:
        script = launch(tspec, dirs, setup.python, setup.region, setup.engine_env, tracking, run_id, tdir / LOG_NAME,
                        should_stop=should_stop, on_line=on_line,
                        named_patterns=[(m.name, re.compile(m.regex)) for m in spec.metrics if m.regex])
        trial.set_user_attr("script_seconds", script.seconds)
    except TrainingStopped as stop:
        state, reason, status = pruner.stopped_state(), stop.reason, "KILLED"
        if unreadable:
            state, reason, status = KatibState.FAILED, unreadable[0], "FAILED"
    except TrainingFailed as exc:
        state, reason, status = KatibState.FAILED, str(exc), "FAILED"
    except Exception as exc:  # an engine error: the trial failed, the tuning goes on
        state, reason, status = KatibState.FAILED, f"{type(exc).__name__}: {exc}", "FAILED"
    state, reason = pruner.checked(state, reason)
    if state == KatibState.METRICS_UNAVAILABLE:
        status = "FAILED"
    try:
        if state == KatibState.SUCCEEDED:
            save_model(None, tracking, tspec, dirs, run_id, to_output_uris=False)
    finally:
        close_run(tracking, run_id, status, tdir / LOG_NAME, reason, tags={TAG_TRIAL_STATE: state.value})
        shutil.rmtree(tdir, ignore_errors=True)
    return state, reason, run_id


def _as_flow_run(setup: TrialSetup, tracking: Tracking, tspec: TrainingSpec, tags: dict[str, str], pruner: Pruner):
    """The trial as a flow run of `trial_deployment`; its objective is read from its MLflow run as it logs."""
    from prefect.client.orchestration import get_client

    spec, trial = setup.spec, pruner.trial
    assert spec.trial_deployment is not None
    patterns = tspec.metric_patterns + [m.regex for m in spec.metrics if m.regex]
    tspec = tspec.with_overrides({"tags": tags, "metric_patterns": patterns})
    fr = submit(spec.trial_deployment, {"spec": tspec.model_dump(mode="json")}, tspec.job_variables())
    trial.set_user_attr("flow_run_id", str(fr.id))
    run_id, seen, asked_to_stop, metrics_read = None, 0, False, 0.0
    with get_client(sync_client=True) as client:  # one client for the whole wait: each costs a TLS context
        while True:
            state = client.read_flow_run(fr.id).state
            final = state is not None and state.is_final()
            # the state is cheap to ask for often (its end is what the tuning waits on); MLflow's
            # metric history is read twice a second while it runs, and once more at its end
            if final or time.monotonic() - metrics_read >= METRICS_POLL_SECONDS:
                metrics_read = time.monotonic()
                if run_id is None:
                    found = tracking.find_training_run(str(fr.id))
                    run_id = found.run_id if found else None
                if run_id is not None:
                    history = sorted(tracking.metric_history(run_id, spec.objective.metric),
                                     key=lambda m: (m.timestamp, m.step))
                    for m in history[seen:]:
                        pruner.report(m.value)
                    seen = len(history)
            reason = pruner.stop_reason()
            if reason and not asked_to_stop and not final:
                cancel_flow_run(str(fr.id), reason)
                asked_to_stop = True
            if final:
                break
            time.sleep(STATE_POLL_SECONDS)
    assert state is not None
    if state.is_completed():
        return KatibState.SUCCEEDED, None, run_id
    if state.is_cancelled():
        return pruner.stopped_state(), pruner.stop_reason() or state.message, run_id
    return KatibState.FAILED, state.message, run_id
