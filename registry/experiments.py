"""Experiments are MLflow experiments; trainings are runs tagged `mlyard.kind=training`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Sequence

from mlflow.entities import ViewType

from mlyard.core.access import DEFAULT_PROJECT
from mlyard.core.errors import AlreadyExists, ExperimentBusy, ExperimentNotFound
from mlyard.core.names import TAG_KIND, TAG_NOTE, TAG_PROJECT, TAG_TRAINING_NAME
from mlyard.registry.tracking import Tracking

DESCRIPTION_TAG = TAG_NOTE


@dataclass(frozen=True)
class ExperimentInfo:
    id: str
    name: str
    description: str
    trainings: int
    running: int
    created_at: str
    project: str = DEFAULT_PROJECT

    def as_dict(self) -> dict:
        return asdict(self)


class Experiments:
    def __init__(self, tracking: Tracking):
        self.tracking = tracking
        self.client = tracking.client

    def create(self, name: str, description: str = "") -> ExperimentInfo:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "active":
            raise AlreadyExists("experiment", name)
        exp_id = self.tracking.experiment_id(name, create=True)
        if description:
            self.client.set_experiment_tag(exp_id, DESCRIPTION_TAG, description)
        return self.get(name)

    def list(self, projects: Sequence[str] | None = None) -> list[ExperimentInfo]:
        """The active experiments (of `projects` alone, when given: untagged ones are `default`'s)."""
        return [self._info(e) for e in self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
                if (projects is None or e.tags.get(TAG_PROJECT, DEFAULT_PROJECT) in projects)
                and (e.name != "Default" or self._count(e.experiment_id)[0])]

    def get(self, name: str) -> ExperimentInfo:
        exp = self.client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage != "active":
            raise ExperimentNotFound(name)
        return self._info(exp)

    def delete(self, name: str, other_running: Sequence[str] = ()) -> None:
        """Delete an experiment; refused while a training in it runs (or any of `other_running`)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage != "active":
            raise ExperimentNotFound(name)
        running = [r.data.tags.get(TAG_TRAINING_NAME, r.info.run_name) for r in self.client.search_runs(
            [exp.experiment_id], filter_string="attributes.status = 'RUNNING'")]
        running += list(other_running)
        if running:
            raise ExperimentBusy(name, sorted(set(running)))
        self.client.delete_experiment(exp.experiment_id)

    def _count(self, exp_id: str) -> tuple[int, int]:
        runs = self.client.search_runs([exp_id], filter_string=f"tags.`{TAG_KIND}` = 'training'", max_results=50000)
        return len(runs), sum(1 for r in runs if r.info.status == "RUNNING")

    def _info(self, e) -> ExperimentInfo:
        total, running = self._count(e.experiment_id)
        created = datetime.fromtimestamp((e.creation_time or 0) / 1000, timezone.utc).isoformat(timespec="seconds")
        return ExperimentInfo(e.experiment_id, e.name, e.tags.get(DESCRIPTION_TAG, ""), total, running, created,
                              e.tags.get(TAG_PROJECT, DEFAULT_PROJECT))
