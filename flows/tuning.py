"""Tune: search hyperparameters with trials of one training (Katib / EasyMaker semantics, Optuna engine).

1. Resolve the training (inline or from a template) and check its locations.
2. Stage in the source, datasets and checkpoint once; prepare the environment once.
3. Open (or, on a retried flow run, resume) the study in the platform DB and the parent MLflow run.
4. Run trials, up to parallel_trials at a time, until the tuning ends: GoalReached, MaxTrialsReached,
   SuggestionEndReached, max failed trials (FAIL), or a stop request (running trials KILLED).
5. Record the outcome in MLflow (counts, reason, best trial); the best trial's model is in its child run.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import threading
import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.platform import Platform
from flows.training import check_locations, prepare_environment, stage_inputs
from mlyard.errors import SpecError, TrainingFailed, TrainingStopped, TuningFailed
from mlyard.names import (
    FLOW_TUNE,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_KIND,
    TAG_NOTE,
    TAG_PARENT_RUN_ID,
    TAG_REASON,
    TAG_STATUS,
    TAG_STATUS_REASON,
    TAG_TRAINING_ID,
    TAG_TRAINING_NAME,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
    TAG_TUNING_ID,
    TASK_TRIAL,
)
from mlyard.specs import TrainingSpec, TuningSpec
from tasks.launch import Workdirs, run_script
from tasks.metrics import Metric
from tasks.orchestration import cancel_flow_run, cancel_watch, prefect_link, stopped_on_interrupt, submit
from tuning import KatibState, best_value, create_study, decide, grid_size, objective_parsers, recover_interrupted
from tuning.engine import REASON_ATTR, STATE_ATTR, parse_line, search_space, trial_counts, trial_reports


class TuningResult(BaseModel):
    tuning_id: str = Field(description="Prefect flow run id of the tuning.")
    run_id: str = Field(description="MLflow parent run id.")
    status: str = Field(description="As the console shows it: COMPLETE (GoalReached), COMPLETE (MaxTrialsReached), ...")
    reason: str = Field(description="GoalReached, MaxTrialsReached or SuggestionEndReached.")
    best_trial: int | None
    best_value: float | None
    best_params: dict
    best_run_id: str | None = Field(description="MLflow run of the best trial (its model becomes a model version).")
    counts: dict[str, int]


class _Ctx:
    """What every trial of one tuning shares."""

    def __init__(self, p, spec, base, inputs, python, parent_run, experiment, scratch, tuning_id):
        self.p, self.spec, self.base, self.inputs, self.python = p, spec, base, inputs, python
        self.parent_run, self.experiment, self.scratch, self.tuning_id = parent_run, experiment, scratch, tuning_id
        self.stop_reason: str | None = None
        self.parsers = objective_parsers(spec)


def resolve_training(p: Platform, spec: TuningSpec) -> TrainingSpec:
    base = spec.training if spec.training is not None else p.templates.spec_for(spec.template)
    return base.with_overrides({"name": spec.name, "experiment": spec.experiment or base.experiment})


@flow(name=FLOW_TUNE, flow_run_name="{spec.name}", on_crashed=[stopped_on_interrupt],
      description="Hyperparameter tuning: trials of a training, searched with Optuna.")
def tune(spec: TuningSpec) -> TuningResult:
    p = Platform()
    logger = get_run_logger()
    tuning_id = str(flow_run.get_id() or f"local-{time.time_ns()}")

    # 1. The training every trial runs.
    base = resolve_training(p, spec)
    if base.nodes > 1:
        raise SpecError("training.nodes", base.nodes, "more than 1 node per trial needs the Kubernetes gpu pool")
    check_locations(p.storage, base)

    scratch = p.scratch(spec.name)
    try:
        # 2. Stage in once: shared by every trial (each gets its own model and checkpoint dirs).
        inputs = stage_inputs(p, base, scratch)
        python = prepare_environment(inputs[0], p.settings.envs_dir)

        # 3. Study and parent run.
        study = create_study(spec, p.settings.catalog_db_url, f"mlyard-tuning-{tuning_id}")
        interrupted = recover_interrupted(study)
        if interrupted:
            logger.warning("resuming: trials %s were interrupted and count as KILLED", interrupted)
            for t in study.get_trials(deepcopy=False):
                if t.number in interrupted and t.user_attrs.get("run_id"):
                    p.tracking.end_run(t.user_attrs["run_id"], "KILLED")
        parent = p.tracking.find_run({TAG_TUNING_ID: tuning_id, TAG_KIND: "tuning"}) or p.tracking.start_run(
            base.experiment, spec.name, tags={TAG_KIND: "tuning", TAG_TUNING_ID: tuning_id, TAG_TRAINING_NAME: spec.name,
                                              TAG_NOTE: spec.description, **prefect_link()},
            params={"strategy": spec.strategy, "seed": spec.seed, "max_trials": spec.max_trials,
                    "parallel_trials": spec.parallel_trials, "objective": spec.objective.metric,
                    "direction": spec.objective.direction})
        ctx = _Ctx(p, spec, base, inputs, python, parent, base.experiment, scratch, tuning_id)

        # 4. Trials.
        try:
            status, reason = run_trials(ctx, study)
        except BaseException as exc:
            p.tracking.set_tags(parent, {TAG_STATUS: "FAIL HYPERPARAMETER TUNING", TAG_REASON: str(exc)[:5000]})
            p.tracking.end_run(parent, "FAILED")
            raise

        # 5. Outcome.
        result = _result(ctx, study, status, reason)
        p.tracking.set_tags(parent, {TAG_STATUS: status, TAG_REASON: reason,
                                     TAG_BEST_TRIAL: str(result.best_trial), TAG_BEST_RUN_ID: str(result.best_run_id)})
        if result.best_value is not None:
            p.tracking.log_metrics(parent, [Metric(spec.objective.metric, result.best_value, 0, int(time.time() * 1000))])
        if status == "FAILED":
            p.tracking.end_run(parent, "FAILED")
            raise TuningFailed(reason)
        if status == "STOPPED":
            p.tracking.end_run(parent, "KILLED")
            return Cancelled(message=f"STOPPED: {reason}")
        p.tracking.end_run(parent, "FINISHED")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("tuning %s COMPLETE (%s): best trial %s, %s=%s", spec.name, reason, result.best_trial,
                spec.objective.metric, result.best_value)
    return Completed(message=f"COMPLETE ({reason})", data=result)


def run_trials(ctx: _Ctx, study) -> tuple[str, str]:
    """Launch trials while `decide` says go on; returns (status, reason)."""
    spec, logger = ctx.spec, get_run_logger()
    space = search_space(spec)
    grid_n = grid_size(spec) if spec.strategy == "grid" else None
    stop = cancel_watch(ctx.tuning_id)
    runner = ThreadPoolTaskRunner(max_workers=spec.parallel_trials)
    running = []
    last_progress = None
    with runner:
        while True:
            counts = trial_counts(trial_reports(study))
            best = _best(study)
            verdict = decide(spec, counts, best, grid_exhausted=grid_n is not None and counts.total >= grid_n)
            progress = (counts.succeeded, counts.running, counts.failed, counts.early_stopped, counts.killed, best)
            if progress != last_progress:
                logger.info("trials: %d succeeded, %d running, %d failed, %d early stopped, %d killed; best %s=%s",
                            *progress[:5], spec.objective.metric, best)
                last_progress = progress
            cancelled = stop()
            if cancelled or (verdict and (verdict[0] == "FAILED" or verdict[1] == "GoalReached")):
                ctx.stop_reason = cancelled or verdict[1]
                wait(running)
                if cancelled:
                    return "STOPPED", cancelled
                return verdict
            running = [f for f in running if not f.wrapped_future.done()]
            if verdict:
                if not running:
                    return verdict
            elif len(running) < spec.parallel_trials:
                trial = study.ask(space)
                trial.set_user_attr(STATE_ATTR, KatibState.RUNNING.value)
                running.append(runner.submit(run_trial, parameters={"ctx": ctx, "trial": trial}))
                continue
            if running:  # until one trial ends (or half a second passes: stop requests are checked)
                concurrent.futures.wait([f.wrapped_future for f in running], timeout=0.5,
                                        return_when=concurrent.futures.FIRST_COMPLETED)


@task(name=TASK_TRIAL, cache_policy=NO_CACHE, task_run_name=TASK_TRIAL + "-{trial.number}")
def run_trial(ctx: _Ctx, trial) -> str:
    """One trial: a training run with the suggested hyperparameters, pruned by the median rule.

    Locally the training is a process of this flow run; with `trial_deployment` it is a flow run of
    that deployment (a pod on the Kubernetes pool), followed through its MLflow metrics."""
    spec = ctx.spec
    number = trial.number
    tspec = ctx.base.with_overrides({"name": f"{spec.name[:40]}-t{number}", "hyperparameters": dict(trial.params)})
    tags = {TAG_PARENT_RUN_ID: ctx.parent_run, TAG_TUNING_ID: ctx.tuning_id, TAG_TRIAL_NUMBER: str(number)}
    pruner = _Pruner(ctx, trial)
    try:
        if spec.trial_deployment:
            state, reason, run_id = _trial_as_flow_run(ctx, trial, tspec, tags, pruner)
        else:
            state, reason, run_id = _trial_as_process(ctx, trial, tspec, tags, pruner)
    except Exception as exc:  # the engines failed around the trial: it FAILED, the tuning goes on
        state, reason, run_id = KatibState.FAILED, f"{type(exc).__name__}: {exc}", trial.user_attrs.get("run_id")
    value = best_value(pruner.values, spec.objective.direction)
    if state == KatibState.SUCCEEDED and value is None:
        state, reason = KatibState.METRICS_UNAVAILABLE, f"the objective {spec.objective.metric!r} was never printed"
    trial.set_user_attr(STATE_ATTR, state.value)
    if run_id:
        trial.set_user_attr("run_id", run_id)
    if reason:
        trial.set_user_attr(REASON_ATTR, reason[:2000])
    if value is not None:
        trial.set_user_attr("objective", value)
    trial.study.tell(trial, value if state == KatibState.SUCCEEDED else None, state=state.optuna_state)
    return state.value


class _Pruner:
    """Feeds objective values to Optuna (step = 1, 2, 3, ...) and remembers when the median rule fired."""

    def __init__(self, ctx: _Ctx, trial):
        self.ctx, self.trial = ctx, trial
        self.values: list[float] = []
        self.pruned_at: int | None = None
        self.lock = threading.Lock()

    def report(self, value: float) -> None:
        with self.lock:
            self.values.append(value)
            self.trial.report(value, step=len(self.values))
            if self.ctx.spec.early_stopping and self.pruned_at is None and self.trial.should_prune():
                self.pruned_at = len(self.values)

    def stop_reason(self) -> str | None:
        if self.pruned_at is not None:
            return f"early stopped by the median rule after {self.pruned_at} reports"
        return self.ctx.stop_reason


def _trial_as_process(ctx: _Ctx, trial, tspec: TrainingSpec, tags: dict, pruner: _Pruner):
    p, spec, number = ctx.p, ctx.spec, trial.number
    tdir = ctx.scratch / f"trial-{number}"
    dirs = Workdirs.under(tdir, *ctx.inputs)
    run_id = p.tracking.start_run(ctx.experiment, tspec.name, tags={
        **tags, TAG_KIND: "trial", TAG_TRAINING_ID: f"{ctx.tuning_id}/trial-{number}", TAG_TRAINING_NAME: tspec.name,
        **prefect_link()},
        params=tspec.hyperparameters)
    trial.set_user_attr("run_id", run_id)

    def on_line(line: str) -> None:
        found = parse_line(ctx.parsers, line)
        if spec.objective.metric in found:
            pruner.report(found[spec.objective.metric])

    state, reason, status = KatibState.SUCCEEDED, None, "FINISHED"
    try:
        script = run_script(tspec, dirs, ctx.python, p.settings.region, {**os.environ, **p.settings.engine_env()},
                            tdir / "output.log", metric_sink=lambda batch: p.tracking.log_metrics(run_id, batch),
                            should_stop=pruner.stop_reason, on_line=on_line)
        trial.set_user_attr("script_seconds", script.seconds)
    except TrainingStopped as stop:
        state = KatibState.EARLY_STOPPED if pruner.pruned_at is not None else KatibState.KILLED
        reason, status = stop.reason, "KILLED"
    except TrainingFailed as exc:
        state, reason, status = KatibState.FAILED, str(exc), "FAILED"
    except Exception as exc:  # an engine error: the trial failed, the tuning goes on
        state, reason, status = KatibState.FAILED, f"{type(exc).__name__}: {exc}", "FAILED"
    if state == KatibState.SUCCEEDED and not pruner.values:
        state, status = KatibState.METRICS_UNAVAILABLE, "FAILED"
        reason = f"the objective {ctx.spec.objective.metric!r} was never printed"
    try:
        if state == KatibState.SUCCEEDED and any(dirs.model.iterdir()):
            p.tracking.log_artifacts(run_id, dirs.model, "model")
        if (tdir / "output.log").exists():
            p.tracking.log_artifact(run_id, tdir / "output.log", "logs")
        p.tracking.set_tags(run_id, {TAG_TRIAL_STATE: state.value, **({TAG_STATUS_REASON: reason[:5000]} if reason else {})})
    finally:
        p.tracking.end_run(run_id, status)
        shutil.rmtree(tdir, ignore_errors=True)
    return state, reason, run_id


def _trial_as_flow_run(ctx: _Ctx, trial, tspec: TrainingSpec, tags: dict, pruner: _Pruner):
    """The trial as a flow run of `trial_deployment`; its objective is read from its MLflow run as it logs."""
    from prefect.client.orchestration import get_client

    p, spec = ctx.p, ctx.spec
    patterns = tspec.metric_patterns + [m.regex for m in spec.metrics if m.regex]
    tspec = tspec.with_overrides({"tags": tags, "metric_patterns": patterns})
    fr = submit(spec.trial_deployment, {"spec": tspec.model_dump(mode="json")}, tspec.job_variables())
    trial.set_user_attr("flow_run_id", str(fr.id))
    run_id, seen, asked_to_stop = None, 0, False
    while True:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(fr.id).state
        if run_id is None:
            found = p.tracking.find_training_run(str(fr.id))
            run_id = found.run_id if found else None
        if run_id is not None:
            history = sorted(p.tracking.metric_history(run_id, spec.objective.metric), key=lambda m: (m.timestamp, m.step))
            for m in history[seen:]:
                pruner.report(m.value)
            seen = len(history)
        reason = pruner.stop_reason()
        if reason and not asked_to_stop and not state.is_final():
            cancel_flow_run(str(fr.id), reason)
            asked_to_stop = True
        if state.is_final():
            break
        time.sleep(0.5)
    if state.is_completed():
        return KatibState.SUCCEEDED, None, run_id
    if state.is_cancelled():
        return (KatibState.EARLY_STOPPED if pruner.pruned_at is not None else KatibState.KILLED), pruner.stop_reason() \
            or state.message, run_id
    return KatibState.FAILED, state.message, run_id


def _best(study):
    try:
        return study.best_value
    except ValueError:
        return None


def _result(ctx: _Ctx, study, status: str, reason: str) -> TuningResult:
    reports = trial_reports(study)
    counts = trial_counts(reports)
    best = None
    try:
        bt = study.best_trial
        best = next(r for r in reports if r.number == bt.number)
    except ValueError:
        pass
    shown = f"COMPLETE ({reason})" if status == "COMPLETE" else status  # as `mlyard tunings show` says it
    return TuningResult(tuning_id=ctx.tuning_id, run_id=ctx.parent_run, status=shown, reason=reason,
                        best_trial=best.number if best else None, best_value=best.value if best else None,
                        best_params=best.params if best else {}, best_run_id=best.run_id if best else None,
                        counts={k: getattr(counts, k) for k in ("succeeded", "running", "failed", "killed", "early_stopped")})

