"""Trainings as users see them: Prefect flow runs of the `train` flow, with statuses as the seeds
name them derived from Prefect's state (never stored; see mlyard/runs.py), and the MLflow run each
one logged to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlyard import runs
from mlyard.runs import ACTIVE_STATUSES, TRAINING

FLOW_NAME = TRAINING.flow
__all__ = ["ACTIVE_STATUSES", "TrainingInfo", "training_status", "list_trainings", "get_training", "stop_training",
           "active_in_experiment", "tensorboard_logs"]


def training_status(state_type: str | None, entry_point_started: bool) -> str:
    """RUNNING only once the entry point runs (before that the run stages inputs and builds its
    environment: CREATE IN PROGRESS). A failure before the entry point started is CREATE FAILED;
    after, FAIL TRAIN. A crash of the infrastructure counts as FAIL TRAIN."""
    return runs.status(TRAINING, state_type, entry_point_started)


@dataclass
class TrainingInfo(runs.RunInfo):
    experiment: str = "default"


def _training(info: runs.RunInfo) -> TrainingInfo:
    return TrainingInfo(**info.as_dict(), experiment=info.spec.get("experiment", "default"))


def list_trainings(limit: int = 100, experiment: str | None = None, active_only: bool = False) -> list[TrainingInfo]:
    """Newest first. `active_only`: only those not yet finished (queued, preparing, running, stopping)."""
    out = [_training(r) for r in runs.list_runs(TRAINING, limit, active_only)]
    return [t for t in out if experiment is None or t.experiment == experiment]


def get_training(training_id: str) -> TrainingInfo:
    return _training(runs.get_run(TRAINING, training_id))


def stop_training(training_id: str, reason: str = "stopped by user") -> TrainingInfo:
    """Stop a training: the whole process group of its script is ended; it becomes STOPPED."""
    return _training(runs.stop_run(TRAINING, training_id, reason))


def active_in_experiment(experiment: str) -> list[str]:
    return [t.name for t in list_trainings(limit=10_000, experiment=experiment, active_only=True)
            if t.status in ACTIVE_STATUSES]


def tensorboard_logs(training_id: str) -> tuple[str, Path, bool]:
    """(the whole training id, the folder of its TensorBoard logs, whether they are live): while it runs on
    this machine, its working folder's `EM_TENSORBOARD_LOG_DIR` (TensorBoard follows the script's writes);
    else the copy it saved to its MLflow run, downloaded once into `<home>/tensorboard/ID`. SpecError when
    the training wrote none."""
    import shutil

    from mlyard.core.connection import connect
    from mlyard.core.errors import MlyardError, SpecError
    from mlyard.core.settings import Settings
    from mlyard.flows.platform import Platform
    from mlyard.tasks.processes import alive

    here = Settings()
    if here.api_url or here.api_key is not None:  # a member's machine: the logs are on the platform's
        raise MlyardError("`mlyard trainings tensorboard` runs on the platform's own machine (it reads the run's "
                          "folder there); from yours, open the run in the MLflow UI: its tensorboard artifacts")
    info = get_training(training_id)
    settings = connect()
    if info.status in ACTIVE_STATUSES:  # its working folder: <home>/runs/NAME.pidPID.*/tensorboard
        for folder in sorted(settings.runs_dir.glob(f"{info.name}.pid*"), key=lambda f: f.stat().st_mtime, reverse=True):
            pid = folder.name.split(".pid", 1)[1].split(".", 1)[0]
            if pid.isdigit() and alive(int(pid)) and (folder / "tensorboard").is_dir():
                return info.id, folder / "tensorboard", True
    p = Platform(settings)
    run = p.tracking.find_training_run(info.id)
    if run is None or not p.tracking.has_artifacts(run.run_id, "tensorboard"):
        raise SpecError("training", training_id, "a training whose script wrote TensorBoard logs to "
                        "EM_TENSORBOARD_LOG_DIR (this one wrote none)" + (
                            "; it is still starting: try again once it runs" if info.status in ACTIVE_STATUSES else ""))
    kept = settings.home_dir / "tensorboard" / info.id
    kept.parent.mkdir(mode=0o700, exist_ok=True)  # the home's, private as all of it (`up` makes it so too)
    kept.parent.chmod(0o700)
    if not kept.is_dir():
        partial = kept.with_name(f"{info.id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        p.tracking.download(run.run_id, "tensorboard", partial)
        partial.rename(kept)
    return info.id, kept, False
