"""Trainings as users see them: Prefect flow runs of the `train` flow, with statuses as the seeds
name them derived from Prefect's state (never stored; see mlyard/runs.py), and the MLflow run each
one logged to.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlyard import runs
from mlyard.runs import ACTIVE_STATUSES, TRAINING

FLOW_NAME = TRAINING.flow
__all__ = ["ACTIVE_STATUSES", "TrainingInfo", "training_status", "list_trainings", "get_training", "stop_training",
           "active_in_experiment"]


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
