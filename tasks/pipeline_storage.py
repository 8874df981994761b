"""A pipeline run's folder kept in its project's storage, where the run's own folder is not the readers' (a flow
run's pod on a cluster, whose home goes with it): `<project prefix>/pipeline-runs/<run id>/` (core/uris.py
project_prefix; Settings.projects_uri, an object store on a cluster). The run copies its small files there as it
goes (the pipeline as run, its arguments, each step's state: `Keeping`, every few seconds) and the whole folder
with the steps' outputs when it ends; `mlyard pipeline-runs show` and `graph` read it there (`kept_view`, through
tasks/pipelines.py folder_view) when the folder is not on their machine. On one machine the projects' storage is
a folder of the home, and the run's folder is read where it is: nothing is copied.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from mlyard.core.errors import StorageError
from mlyard.core.uris import parse_uri, project_prefix

FOLDER = "pipeline-runs"
SMALL = ("pipeline.yaml", "arguments.json", "spec.json", "nodes.json", "result.json")
EVERY_SECONDS = 5.0


def kept_at(settings: Any, project: str, run_id: str) -> str | None:
    """Where the run's folder is kept: None when the project's storage is a local folder (one machine)."""
    area = project_prefix(settings, project)
    if parse_uri(area, "projects_uri").kind == "local":
        return None
    return f"{area}/{FOLDER}/{run_id}"


class Keeping:
    """The run folder's small files copied to `where` every EVERY_SECONDS while the steps run (each step's
    state as it moves), and everything, outputs included, at `close()` (the run's end, whatever it was)."""

    def __init__(self, storage: Any, run_dir: Path, where: str | None, logger: Any = None):
        self.storage, self.run_dir, self.where, self.logger = storage, run_dir, where, logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pipeline-keeping", daemon=True)
        if where is not None:
            self._thread.start()

    def small(self) -> None:
        for name in SMALL:
            path = self.run_dir / name
            if path.is_file():
                self.storage.write_bytes(f"{self.where}/{name}", path.read_bytes())

    def _loop(self) -> None:
        while True:  # at once (the pipeline as run), then every EVERY_SECONDS
            try:
                self.small()
            except (OSError, StorageError) as exc:  # the next round tries again; the end copies everything
                if self.logger is not None:
                    self.logger.warning(f"keeping the run's folder at {self.where}: {exc}")
            if self._stop.wait(EVERY_SECONDS):
                return

    def close(self) -> None:
        if self.where is None:
            return
        self._stop.set()
        self._thread.join(30)
        self.storage.upload(self.run_dir, self.where)
        if self.logger is not None:
            self.logger.info(f"the run's folder (its steps' outputs) is kept at {self.where}")


def step_outputs(files: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    """Every file a task wrote, from the outputs folder's files (name relative to it, bytes, path or URI): its
    task (loop iterations as task[i]), name, path and size."""
    found = []
    for name, size, where in files:
        parts = Path(name).parts[1:]  # below the kfp.local run folder
        if len(parts) < 2 or parts[-1] == "executor_output.json":
            continue
        folders = list(parts[:-1])
        iteration = next((p.rsplit("-iteration-", 1)[1] for p in folders if "-iteration-" in p), None)
        found.append({"task": folders[-1] + (f"[{iteration}]" if iteration is not None else ""), "name": parts[-1],
                      "path": where, "bytes": size})
    return found


def pipeline_text(storage: Any, run_dir: str) -> str | None:
    """The pipeline as the run ran it, from its folder here or its kept folder (a URI); None: neither has it."""
    from mlyard.core.errors import StorageNotFound

    if "://" not in run_dir:
        path = Path(run_dir) / "pipeline.yaml"
        return path.read_text() if path.is_file() else None
    try:
        return storage.read_bytes(f"{run_dir}/pipeline.yaml").decode()
    except StorageNotFound:
        return None


def kept_view(storage: Any, where: str) -> dict[str, Any]:
    """What `show` says of a run from its kept folder: nodes, outputs (their URIs), result (empty: nothing kept
    yet)."""
    from mlyard.core.errors import StorageNotFound

    def text(name: str) -> str | None:
        try:
            return storage.read_bytes(f"{where}/{name}").decode()
        except StorageNotFound:
            return None

    try:
        files = [(n, size, uri) for n, size, uri, _ in storage.entries(f"{where}/outputs")]
    except StorageNotFound:
        files = []
    return {"run_dir": where, "nodes": json.loads(text("nodes.json") or "{}"), "outputs": step_outputs(files),
            "result": json.loads(text("result.json") or "{}")}


def forget(settings: Any, run_dir: str) -> None:
    """A deleted run's folder removed: here, or its kept copy in the project's storage."""
    import shutil

    from mlyard.core.errors import StorageNotFound
    from mlyard.tasks.storage import SUCCESS_MARKER, Storage

    if "://" not in run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    storage = Storage(settings)
    try:
        found: Any = storage.entries(run_dir)  # (its `list` method shadows the builtin in its annotations)
    except StorageNotFound:
        found = []
    for _, _, uri, _ in found:
        storage.delete(uri)
    storage.delete(f"{run_dir}/{SUCCESS_MARKER}")
