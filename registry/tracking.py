"""MLflow tracking facade: experiments, runs, params, metrics, artifacts.

Uses `MlflowClient` with explicit run ids (never the fluent API's global active run), so several
trainings can log from one process and no run is left active behind a test.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping, Protocol

from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlyard.core.access import DEFAULT_PROJECT
from mlyard.core.errors import Conflict, ExperimentNotFound
from mlyard.core.names import TAG_EXPERIMENT_KIND, TAG_PROJECT, TAG_TRAINING_ID

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
MODEL_TRAINING = "custom_model_development"
MAX_BATCH = 1000  # MLflow's log_batch limit for metrics


@dataclass(frozen=True)
class RunRecord:
    """An MLflow run as mlyard reads it (not MLflow's own object)."""

    run_id: str
    experiment_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    lifecycle_stage: str  # active or deleted
    artifact_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run) -> "RunRecord":
        return cls(run.info.run_id, run.info.experiment_id, run.info.run_name or "", run.info.status,
                   run.info.lifecycle_stage, run.info.artifact_uri, dict(run.data.params), dict(run.data.metrics),
                   dict(run.data.tags))


class MetricLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def step(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


def prepared_db_path() -> Path:
    from importlib.metadata import version

    return Path(sys.prefix) / "share" / "mlyard" / f"mlflow-{version('mlflow')}-empty.db"


def prepare_db() -> Path:
    """An empty MLflow tracking database at its newest migration, made once per installation (`make
    install` runs this): a SQLite database that does not exist yet starts as a copy of it (`start_db`)."""
    import tempfile

    path = prepared_db_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mlflow.db"
        quiet = logging.getLogger("mlflow.store.db.utils")  # its INFO lines were the demo's first screen
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)  # MLflow migrates it (no journal left)
        finally:
            quiet.setLevel(level)
        shutil.copyfile(db, Path(tmp) / "ready.db")
        os.replace(Path(tmp) / "ready.db", path)
    return path


def start_db(tracking_uri: str) -> None:
    """A SQLite tracking database that does not exist yet is made from the prepared one: MLflow would run
    its Alembic migrations one by one (about 2 s of CPU) in whichever process opened it first. The
    Default experiment (id 0) keeps artifacts in ./mlruns/0 of this directory, as MLflow makes it."""
    if not tracking_uri.startswith("sqlite:///") or "?" in tracking_uri:  # a URI with options: MLflow makes it
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if db.exists() or not db.parent.is_dir():  # every Tracking of an existing database: one stat
        return
    prepared = prepared_db_path()  # (reads the installed packages' metadata)
    if not prepared.is_file():
        return
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(prepared, tmp)
        with closing(sqlite3.connect(tmp)) as conn, conn:
            now = int(time.time() * 1000)
            conn.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                         "WHERE experiment_id = 0", (str(Path.cwd() / "mlruns" / "0"), now, now))
        os.chmod(tmp, 0o600)
        os.link(tmp, db)  # never over a database another process made meanwhile
    except OSError:
        pass  # MLflow makes it, as before
    finally:
        tmp.unlink(missing_ok=True)


class Tracking:
    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        """`artifact_root`: where new experiments keep artifacts (embedded stack); None lets the server decide."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        start_db(tracking_uri)
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # -- experiments ---------------------------------------------------------------------------

    def experiment_id(self, name: str, create: bool = False, project: str | None = None) -> str:
        """The id of experiment `name` (made when `create`). With a `project`: an experiment is made as that
        project's (its tag), and one of another project is refused (a run of one project never lands among
        another's; experiments from before projects are `default`'s)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None and project is not None:
            self.check_project(name, exp.tags.get(TAG_PROJECT), project)
        if exp is not None and exp.lifecycle_stage == "active":
            return exp.experiment_id
        if exp is not None:  # deleted earlier: bring it back rather than fail on the unique name
            if not create:
                raise ExperimentNotFound(name)
            self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        if not create:
            raise ExperimentNotFound(name)
        location = (self.artifact_root / name).as_uri() if self.artifact_root else None
        try:
            # Model training, not GenAI: the MLflow UI then opens the runs table, not its GenAI view.
            return self.client.create_experiment(name, artifact_location=location, tags={
                TAG_EXPERIMENT_KIND: MODEL_TRAINING, **({TAG_PROJECT: project} if project else {})})
        except MlflowException:  # created concurrently
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # -- runs ----------------------------------------------------------------------------------

    @staticmethod
    def check_project(name: str, owner: str | None, project: str) -> None:
        if (owner or DEFAULT_PROJECT) != project:
            raise Conflict(f"experiment {name!r} belongs to another project: name an experiment of project "
                           f"{project!r} (or a new one) for its runs")

    def experiment_project(self, name: str) -> str | None:
        """The project of experiment `name` (None: there is none by that name)."""
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else exp.tags.get(TAG_PROJECT, DEFAULT_PROJECT)

    def start_run(self, experiment: str, run_name: str, tags: Mapping[str, str],
                  params: Mapping[str, object] | None = None) -> str:
        """A new run in `experiment`; with TAG_PROJECT among its `tags`, the experiment is that project's."""
        exp_id = self.experiment_id(experiment, create=True, project=tags.get(TAG_PROJECT))
        run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags))
        if params:
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: Iterable[MetricLike]) -> None:
        batch = [MlflowMetric(m.name, m.value, m.timestamp_ms, m.step) for m in metrics]
        for i in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(run_id, metrics=batch[i:i + MAX_BATCH], synchronous=True)

    def log_datasets(self, run_id: str, datasets: Mapping[str, str], context: str) -> None:
        """The datasets a run read, as MLflow dataset inputs (its run page's Datasets): each by its name and
        URI (the digest identifies the URI; its content is not read again here), with the context MLflow
        shows (training, evaluation, inference)."""
        import hashlib
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [DatasetInput(Dataset(name=name, digest=hashlib.sha256(uri.encode()).hexdigest()[:8],
                                       source_type="uri" if "://" in uri else "local",
                                       source=json.dumps({"uri": uri})),
                               tags=[InputTag("mlflow.data.context", context)]) for name, uri in datasets.items()]
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def end_run(self, run_id: str, status: RunStatus) -> None:
        self.client.set_terminated(run_id, status)

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        return RunRecord.of(self.client.get_run(run_id))

    def metric_history(self, run_id: str, name: str):
        return self.client.get_metric_history(run_id, name)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def has_artifacts(self, run_id: str, path: str) -> bool:
        """Whether the run holds artifacts under `path` (a folder it logged, such as `tensorboard`)."""
        return bool(self.client.list_artifacts(run_id, path))

    def find_run(self, tags: Mapping[str, str]) -> str | None:
        """The id of a run carrying all `tags`, or None."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs(experiment_ids=self._all_experiment_ids(), filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def find_training_run(self, training_id: str) -> RunRecord | None:
        """The MLflow run a training (flow run id) logged to, or None."""
        runs = self.client.search_runs(
            experiment_ids=self._all_experiment_ids(),
            filter_string=f"tags.`{TAG_TRAINING_ID}` = '{training_id}'", max_results=1,
        )
        return RunRecord.of(runs[0]) if runs else None

    def _all_experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]
