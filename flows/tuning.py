"""Tune: search hyperparameters with trials of one training (Katib / EasyMaker semantics, Optuna engine).

1. Resolve the training (inline or from a template) and check its locations.
2. Stage in the source, datasets and checkpoint once; prepare the environment once.
3. Open (or, on a retried flow run, resume) the study in the platform DB and the parent MLflow run.
4. Run trials (tuning/loop.py), up to parallel_trials at a time, each a `trial` task (tasks/trials.py),
   until the tuning ends: GoalReached, MaxTrialsReached, SuggestionEndReached, max failed trials
   (FAIL), or a stop request (running trials KILLED).
5. Record the outcome in MLflow (counts, reason, best trial); the best trial's model is in its child run.
"""

from __future__ import annotations

import shutil
import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from mlyard.core.errors import SpecError, TuningFailed
from mlyard.core.names import (
    FLOW_TUNE,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_KIND,
    TAG_PROJECT,
    TAG_REASON,
    TAG_STATUS,
    TAG_TRAINING_NAME,
    TAG_TUNING_ID,
)
from mlyard.core.specs import TrainingSpec, TuningSpec
from mlyard.flows.platform import Platform
from mlyard.tasks.metrics import Metric
from mlyard.tasks.orchestration import (
    appkey_env,
    cancel_watch,
    link_mlflow_run,
    prefect_link,
    run_name,
    run_project,
    stopped_on_interrupt,
)
from mlyard.tasks.training import check_locations, prepare_environment, stage_inputs
from mlyard.tasks.trials import TrialSetup, run_trial
from mlyard.tuning import create_study, recover_interrupted
from mlyard.tuning.engine import RUN_ID_ATTR
from mlyard.tuning.loop import Loop, summary


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


def resolve_training(p: Platform, spec: TuningSpec) -> TrainingSpec:
    base = spec.training if spec.training is not None else p.templates.spec_for(spec.template)
    return base.with_overrides({"name": spec.name, "experiment": spec.experiment or base.experiment})


@flow(name=FLOW_TUNE, flow_run_name=run_name(FLOW_TUNE), persist_result=True, on_crashed=[stopped_on_interrupt],
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
        inputs = stage_inputs(p.storage, base, scratch)
        python = prepare_environment(inputs.source, p.settings.envs_dir)

        # 3. Study and parent run.
        study = create_study(spec, p.settings.catalog_db_url, f"mlyard-tuning-{tuning_id}")
        interrupted = recover_interrupted(study)
        if interrupted:
            logger.warning("resuming: trials %s were interrupted and count as KILLED", interrupted)
            for t in study.get_trials(deepcopy=False):
                if t.number in interrupted and t.user_attrs.get(RUN_ID_ATTR):
                    p.tracking.end_run(t.user_attrs[RUN_ID_ATTR], "KILLED")
        parent = p.tracking.find_run({TAG_TUNING_ID: tuning_id, TAG_KIND: "tuning"}) or p.tracking.start_run(
            base.experiment, spec.name, tags={TAG_KIND: "tuning", TAG_TUNING_ID: tuning_id, TAG_TRAINING_NAME: spec.name,
                                              **prefect_link(spec.description), TAG_PROJECT: run_project()},
            params={"strategy": spec.strategy, "seed": spec.seed, "max_trials": spec.max_trials,
                    "parallel_trials": spec.parallel_trials, "objective": spec.objective.metric,
                    "direction": spec.objective.direction})
        link_mlflow_run(p.tracking, parent, "tuning")
        setup = TrialSetup(spec, base, inputs, python, parent, tuning_id, scratch, p.settings.region,
                           {**p.settings.engine_env(), **appkey_env()})

        # 4. Trials.
        loop = Loop(spec, study)
        try:
            with ThreadPoolTaskRunner(max_workers=spec.parallel_trials) as runner:
                status, reason = loop.run(
                    lambda trial: runner.submit(run_trial, parameters={"setup": setup, "loop": loop,
                                                                       "tracking": p.tracking, "trial": trial}
                                                ).wrapped_future,
                    should_stop=cancel_watch(tuning_id), log=logger.info)
        except BaseException as exc:
            p.tracking.set_tags(parent, {TAG_STATUS: "FAIL HYPERPARAMETER TUNING", TAG_REASON: str(exc)[:5000]})
            p.tracking.end_run(parent, "FAILED")
            raise

        # 5. Outcome.
        shown = f"COMPLETE ({reason})" if status == "COMPLETE" else status  # as `mlyard tunings show` says it
        result = TuningResult(tuning_id=tuning_id, run_id=parent, status=shown, reason=reason, **summary(study))
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
