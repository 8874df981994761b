"""Train: run a user's algorithm under the EasyMaker contract and record it in MLflow.

1. Check the spec against the world: the inputs and the entry point exist, the outputs resolve.
2. Stage in the algorithm source, datasets and input checkpoint; check the entry point exists.
3. Prepare the environment: the algorithm's requirements.txt in a cached virtual environment.
4. Open the MLflow run: tags, hyperparameters as params.
5. Run the entry point: output streamed to the Prefect log, metric lines to MLflow while it runs.
6. Stage out: the model (MLflow artifact and output URI), checkpoints, TensorBoard logs, the log.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from flows.platform import Platform
from mlyard.errors import SpecError, TrainingStopped
from mlyard.names import (
    FLOW_TRAIN,
    TAG_ENTRY_POINT,
    TAG_KIND,
    TAG_NOTE,
    TAG_SOURCE_URI,
    TAG_STATUS_REASON,
    TAG_TRAINING_ID,
    TAG_TRAINING_NAME,
    TASK_RUN_ENTRY_POINT,
)
from mlyard.specs import TrainingSpec
from registry.tracking import Tracking
from tasks import checks
from tasks.launch import Workdirs, requirements_env, run_script
from tasks.orchestration import cancel_watch, prefect_link, stopped_on_interrupt
from tasks.staging import stage_in, stage_out
from tasks.storage import Storage


class TrainingResult(BaseModel):
    training_id: str = Field(description="Prefect flow run id of the training.")
    run_id: str = Field(description="MLflow run id.")
    experiment: str
    model_uri: str | None = Field(description="MLflow artifact URI of the model (None if EM_MODEL_DIR was empty).")
    output_uri: str | None
    metrics: dict[str, float] = Field(description="Last value of each metric the script printed.")
    script_seconds: float = Field(description="How long the entry point itself ran.")


@flow(name=FLOW_TRAIN, flow_run_name="{spec.name}", on_crashed=[stopped_on_interrupt],
      description="Run a training (EasyMaker contract) and record it in MLflow.")
def train(spec: TrainingSpec) -> TrainingResult:
    p = Platform()
    logger = get_run_logger()
    training_id = str(flow_run.get_id() or f"local-{time.time_ns()}")
    if spec.nodes > 1:
        raise SpecError("nodes", spec.nodes, "more than 1 node needs a Kubernetes work pool (the gpu pool); "
                        "locally use nodes: 1 with torchrun and processes_per_node")

    # 1. Check the spec against the world before anything is made.
    check_locations(p.storage, spec)

    scratch = p.scratch(spec.name)
    try:
        # 2. Stage in.
        source, datasets, ckpt_in = stage_inputs(p, spec, scratch)
        dirs = Workdirs.under(scratch, source, datasets, ckpt_in)

        # 3. Environment.
        python = prepare_environment(source, p.settings.envs_dir)

        # 4. MLflow run.
        run_id = p.tracking.start_run(spec.experiment, spec.name, tags={
            **spec.tags, TAG_KIND: "training", TAG_TRAINING_ID: training_id, TAG_TRAINING_NAME: spec.name,
            TAG_SOURCE_URI: spec.source_uri, TAG_ENTRY_POINT: spec.entry_point,
            TAG_NOTE: spec.description, **prefect_link(),
        }, params=spec.hyperparameters)
        try:
            # 5. Run.
            outcome = run_entry_point(spec, dirs, python, p.settings.region, p.settings.engine_env(),
                                      p.tracking, run_id, scratch / "output.log", training_id)
            # 6. Stage out.
            model_uri = save_outputs(p, spec, dirs, run_id)
        except TrainingStopped as stop:
            _finish(p.tracking, run_id, "KILLED", scratch, f"STOPPED: {stop.reason}")
            logger.warning("training stopped: %s", stop.reason)
            return Cancelled(message=f"STOPPED: {stop.reason}")
        except BaseException as exc:
            _finish(p.tracking, run_id, "FAILED", scratch, f"FAIL TRAIN: {exc}")
            raise
        _finish(p.tracking, run_id, "FINISHED", scratch, None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    logger.info("training %s COMPLETE in %.1f s (MLflow run %s)", spec.name, outcome["seconds"], run_id)
    return TrainingResult(training_id=training_id, run_id=run_id, experiment=spec.experiment, model_uri=model_uri,
                          output_uri=spec.output_uri, metrics=outcome["metrics"], script_seconds=outcome["seconds"])


@task(name="check-locations", cache_policy=NO_CACHE)
def check_locations(storage: Storage, spec: TrainingSpec) -> None:
    """Every input location exists, the entry point is in the source, every output resolves."""
    checks.training_inputs(storage, spec)


def stage_inputs(p: Platform, spec: TrainingSpec, scratch: Path) -> tuple[Path, dict[str, Path], Path | None]:
    """Source (with its entry point checked), datasets and input checkpoint as local paths."""
    source = stage_in(p.storage, spec.source_uri, scratch / "source", "source_uri")
    if not (source / spec.entry_point).is_file():
        raise SpecError("entry_point", spec.entry_point, f"a file inside source_uri {spec.source_uri}; "
                        f"it holds: {', '.join(sorted(x.name for x in source.iterdir())[:20]) or 'nothing'}")
    datasets = {name: stage_in(p.storage, uri, scratch / "datasets" / name, f"datasets.{name}")
                for name, uri in spec.datasets.items()}
    ckpt_in = (stage_in(p.storage, spec.checkpoint_input_uri, scratch / "checkpoint-input", "checkpoint_input_uri")
               if spec.checkpoint_input_uri else None)
    return source, datasets, ckpt_in


@task(name="prepare-environment", cache_policy=NO_CACHE)
def prepare_environment(source: Path, envs_dir: Path) -> str:
    logger = get_run_logger()
    return requirements_env(source, envs_dir, log=logger.info)


@task(name=TASK_RUN_ENTRY_POINT, cache_policy=NO_CACHE)
def run_entry_point(spec: TrainingSpec, dirs: Workdirs, python: str, region: str, base_env: dict,
                    tracking: Tracking, run_id: str, log_path: Path, training_id: str) -> dict:
    logger = get_run_logger()
    env = {**os.environ, **base_env}
    logger.info("starting %s", spec.entry_point)
    run = run_script(spec, dirs, python, region, env, log_path,
                     metric_sink=lambda batch: tracking.log_metrics(run_id, batch),
                     should_stop=cancel_watch(training_id), echo=logger.info if spec.collect_logs else None)
    return {"seconds": run.seconds, "metrics": run.metrics}


@task(name="save-outputs", cache_policy=NO_CACHE)
def save_outputs(p: Platform, spec: TrainingSpec, dirs: Workdirs, run_id: str) -> str | None:
    model_uri = None
    if any(dirs.model.iterdir()):
        p.tracking.log_artifacts(run_id, dirs.model, "model")
        model_uri = f"{p.tracking.get_run(run_id).artifact_uri.rstrip('/')}/model"
        if spec.output_uri:
            stage_out(p.storage, dirs.model, spec.output_uri, "output_uri")
    else:
        get_run_logger().warning("EM_MODEL_DIR is empty: the script saved no model")
    if spec.checkpoint_output_uri and any(dirs.checkpoint.iterdir()):
        stage_out(p.storage, dirs.checkpoint, spec.checkpoint_output_uri, "checkpoint_output_uri")
    if any(dirs.tensorboard.iterdir()):
        p.tracking.log_artifacts(run_id, dirs.tensorboard, "tensorboard")
    return model_uri


def _finish(tracking: Tracking, run_id: str, status, scratch: Path, reason: str | None) -> None:
    log = scratch / "output.log"
    try:
        if log.exists():
            tracking.log_artifact(run_id, log, "logs")
        if reason:
            tracking.set_tags(run_id, {TAG_STATUS_REASON: reason[:5000]})
    finally:
        tracking.end_run(run_id, status)

