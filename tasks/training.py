"""A training's steps, and the one launch path a training and a tuning's trial share: open the MLflow
run, run the entry point (tasks/launch.py) with its metrics streamed to MLflow, save the model and
outputs, close the run with its log and reason. Arguments are narrow: a spec, a storage client, an
MLflow tracking client, ids and paths.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlyard.core.names import (
    TAG_ENTRY_POINT,
    TAG_KIND,
    TAG_PROJECT,
    TAG_SOURCE_URI,
    TAG_STATUS_REASON,
    TAG_TRAINING_ID,
    TAG_TRAINING_NAME,
    TASK_RUN_ENTRY_POINT,
)
from mlyard.core.specs import TrainingSpec
from mlyard.registry.tracking import Tracking
from mlyard.tasks import checks
from mlyard.tasks.confinement import Confinement
from mlyard.tasks.environments import requirements_env
from mlyard.tasks.launch import ScriptRun, Workdirs, run_script
from mlyard.tasks.orchestration import prefect_link, run_project, step_started
from mlyard.tasks.staging import stage_in, stage_out
from mlyard.tasks.storage import Storage

LOG_NAME = "output.log"


@dataclass(frozen=True)
class Inputs:
    """A training's staged inputs, as local paths."""

    source: Path
    datasets: dict[str, Path]
    checkpoint: Path | None

    def workdirs(self, under: Path) -> Workdirs:
        return Workdirs.under(under, self.source, self.datasets, self.checkpoint)


@task(name="check-locations", cache_policy=NO_CACHE)
def check_locations(storage: Storage, spec: TrainingSpec) -> None:
    """Every input location exists, the entry point is in the source, every output resolves."""
    checks.training_inputs(storage, spec)


def stage_inputs(storage: Storage, spec: TrainingSpec, scratch: Path,
                 stage: Callable[[Storage, str, Path, str], Path] = stage_in) -> Inputs:
    """Source, datasets and input checkpoint as local paths (check_locations checked them first, the
    entry point included: the one check on the way to a run, beside the one before a command queues it).
    `stage`: the stage-in task; outside a flow run (a node's pod) the storage's own method."""
    source = stage(storage, spec.source_uri, scratch / "source", "source_uri")
    datasets = {name: as_folder(stage(storage, uri, scratch / "datasets" / name, f"datasets.{name}"),
                                scratch / "datasets" / name)
                for name, uri in spec.datasets.items()}
    ckpt_in = (stage(storage, spec.checkpoint_input_uri, scratch / "checkpoint-input", "checkpoint_input_uri")
               if spec.checkpoint_input_uri else None)
    return Inputs(source, datasets, ckpt_in)


def as_folder(staged: Path, folder: Path) -> Path:
    """`EM_DATASET_<NAME>` is a folder (the EasyMaker contract), whatever the dataset's source: a single
    file (a local one, or one S3 object) is put in a folder of its own under its own name, a local file
    by a symbolic link, never a copy."""
    if staged.is_dir():
        return staged
    if staged.parent == folder:  # downloaded there already
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / staged.name
    if not link.exists():
        link.symlink_to(staged)
    return folder


@task(name="prepare-environment", cache_policy=NO_CACHE)
def prepare_environment(source: Path, envs_dir: Path) -> str:
    """The algorithm's requirements.txt in a virtual environment cached for the run's project; its python."""
    logger = get_run_logger()
    return requirements_env(source, envs_dir, log=logger.info, project=run_project())


def open_run(tracking: Tracking, spec: TrainingSpec, training_id: str, kind: str = "training",
             tags: Mapping[str, str] | None = None) -> str:
    """The MLflow run of a training (or a trial, `kind="trial"`): its tags and hyperparameters."""
    return tracking.start_run(spec.experiment, spec.name, tags={
        **spec.tags, **(tags or {}), TAG_KIND: kind, TAG_TRAINING_ID: training_id, TAG_TRAINING_NAME: spec.name,
        TAG_SOURCE_URI: spec.source_uri, TAG_ENTRY_POINT: spec.entry_point, **prefect_link(spec.description),
        TAG_PROJECT: run_project(),
    }, params=spec.hyperparameters)


def announce_run(tracking: Tracking, run_id: str, spec: TrainingSpec) -> None:
    """The training's MLflow run, linked from its Prefect flow run (an artifact), and the datasets it reads
    as the run's dataset inputs."""
    from mlyard.tasks.orchestration import link_mlflow_run

    tracking.log_datasets(run_id, spec.datasets, "training")
    link_mlflow_run(tracking, run_id, "training")


def launch(spec: TrainingSpec, dirs: Workdirs, python: str, region: str, engine_env: Mapping[str, str],
           tracking: Tracking, run_id: str, log_path: Path, should_stop: Callable[[], str | None],
           on_line: Callable[[str], None] | None = None, echo: Callable[[str], None] | None = None,
           named_patterns: Sequence[tuple[str, re.Pattern[str]]] = ()) -> ScriptRun:
    """Run the entry point to its end under the EasyMaker contract, its metrics streamed to the MLflow run,
    once it holds its GPU slots on this machine (tasks/gpu_slots.py)."""
    from mlyard.core.settings import Settings
    from mlyard.tasks.gpu_slots import holding, project_quota
    from mlyard.tasks.orchestration import run_project

    settings = Settings()
    gpus = spec.resources.gpu_count * spec.nodes  # every node here
    quota = project_quota(run_project(), gpus, spec.resources.cpu, settings)  # its project's, while it runs
    with holding(gpus, settings, say=_sayer(), also=quota):
        return run_script(spec, dirs, python, region, {**os.environ, **engine_env}, log_path,
                          metric_sink=lambda batch: tracking.log_metrics(run_id, batch),
                          should_stop=should_stop, on_line=on_line, echo=echo, named_patterns=named_patterns,
                          confinement=Confinement.of(settings, spec.network))


def _sayer() -> Callable[[str], None]:
    """Lines for the run's log (the flow's or task's, from any thread), or stderr outside a run."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger().info
    except MissingContextError:
        return lambda message: print(message, file=sys.stderr, flush=True)


@task(name=TASK_RUN_ENTRY_POINT, cache_policy=NO_CACHE)
def run_entry_point(spec: TrainingSpec, dirs: Workdirs, python: str, region: str, engine_env: Mapping[str, str],
                    tracking: Tracking, run_id: str, log_path: Path,
                    should_stop: Callable[[], str | None]) -> ScriptRun:
    """The training's script runs (the task whose start makes a training RUNNING)."""
    step_started(TASK_RUN_ENTRY_POINT)
    logger = get_run_logger()
    logger.info("starting %s", spec.entry_point)
    return launch(spec, dirs, python, region, engine_env, tracking, run_id, log_path, should_stop,
                  echo=logger.info if spec.collect_logs else None)


def save_model(storage: Storage | None, tracking: Tracking, spec: TrainingSpec, dirs: Workdirs, run_id: str,
               to_output_uris: bool = True) -> str | None:
    """The model to MLflow (and output_uri), checkpoints to checkpoint_output_uri, TensorBoard logs
    to MLflow; returns the model's MLflow artifact URI (None when EM_MODEL_DIR is empty). A trial
    keeps its model in MLflow only (`to_output_uris=False`). What the script left is taken as data: a
    link leading out of its folder is not followed but removed, and named in the run's log."""
    from mlyard.tasks.sandbox import as_data

    say = _sayer()
    for folder in (dirs.model, dirs.checkpoint, dirs.tensorboard):
        for refused in as_data(folder):
            say(f"left out of {folder.name}: {refused}")
    model_uri = None
    if any(dirs.model.iterdir()):
        tracking.log_artifacts(run_id, dirs.model, "model")
        model_uri = f"{tracking.get_run(run_id).artifact_uri.rstrip('/')}/model"
        if to_output_uris and storage is not None and spec.output_uri:
            stage_out(storage, dirs.model, spec.output_uri, "output_uri")
    if to_output_uris and storage is not None and spec.checkpoint_output_uri and any(dirs.checkpoint.iterdir()):
        stage_out(storage, dirs.checkpoint, spec.checkpoint_output_uri, "checkpoint_output_uri")
    if any(dirs.tensorboard.iterdir()):
        tracking.log_artifacts(run_id, dirs.tensorboard, "tensorboard")
    return model_uri


@task(name="save-outputs", cache_policy=NO_CACHE)
def save_outputs(storage: Storage, tracking: Tracking, spec: TrainingSpec, dirs: Workdirs, run_id: str) -> str | None:
    model_uri = save_model(storage, tracking, spec, dirs, run_id)
    if model_uri is None:
        get_run_logger().warning("EM_MODEL_DIR is empty: the script saved no model")
    return model_uri


def close_run(tracking: Tracking, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"], log_path: Path | None,
              reason: str | None, tags: Mapping[str, str] | None = None) -> None:
    """End the MLflow run: the script's log as an artifact (None: the nodes logged theirs), the reason of a
    failure or stop as a tag."""
    try:
        if log_path is not None and log_path.exists():
            tracking.log_artifact(run_id, log_path, "logs")
        extra = {**(tags or {}), **({TAG_STATUS_REASON: reason[:5000]} if reason else {})}
        if extra:
            tracking.set_tags(run_id, extra)
    finally:
        tracking.end_run(run_id, status)
