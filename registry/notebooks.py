"""Notebooks in the catalog and their rules, in one place:

- names are unique;
- an action starts only from the statuses it can follow (mlyard.core.specs.notebook.ALLOWED_FROM), and one at a
  time: the status moves to the action's IN PROGRESS in the same transaction that checks it;
- the instance type changes only while the notebook is stopped, and only to one of the same core type;
- storage sizes never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from mlyard.core.errors import AlreadyExists, NotebookNotFound, Protected
from mlyard.core.specs.notebook import ALLOWED_FROM, IN_PROGRESS, STOPPED, instance_type
from mlyard.registry.catalog import Catalog
from mlyard.registry.tables import Notebook, utcnow


@dataclass(frozen=True)
class NotebookRecord:
    id: int
    name: str
    spec: dict[str, Any]
    status: str
    reason: str
    flow_run_id: str | None
    created_at: datetime
    updated_at: datetime
    project: str = "default"
    owner: str = ""  # the user its JupyterLab answers ("": made before projects, the platform's)


def _record(row: Notebook) -> NotebookRecord:
    return NotebookRecord(row.id, row.name, dict(row.spec), row.status, row.reason, row.flow_run_id, row.created_at,
                          row.updated_at, row.project or "default", row.owner or "")


class Notebooks:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def create(self, name: str, spec: dict[str, Any], project: str = "default", owner: str = "") -> NotebookRecord:
        with self.catalog.session() as s:
            if s.scalar(select(Notebook.id).where(Notebook.name == name)) is not None:
                raise AlreadyExists("notebook", name)
            row = Notebook(name=name, spec=spec, status="CREATE REQUESTED", project=project, owner=owner)
            s.add(row)
            s.flush()
            return _record(row)

    def get(self, name: str) -> NotebookRecord:
        with self.catalog.session() as s:
            return _record(self._row(s, name))

    def get_by_id(self, notebook_id: int) -> NotebookRecord:
        with self.catalog.session() as s:
            row = s.get(Notebook, notebook_id)
            if row is None:
                raise NotebookNotFound(str(notebook_id))
            return _record(row)

    def all(self, projects: list[str] | None = None) -> list[NotebookRecord]:
        """Every notebook, or those of `projects`."""
        q = select(Notebook).order_by(Notebook.id)
        if projects is not None:
            q = q.where(Notebook.project.in_(projects))
        with self.catalog.session() as s:
            return [_record(r) for r in s.scalars(q)]

    @staticmethod
    def _row(s: Any, name: str, lock: bool = False) -> Notebook:
        q = select(Notebook).where(Notebook.name == name)
        row = s.scalar(q.with_for_update() if lock else q)
        if row is None:
            raise NotebookNotFound(name)
        return row

    def begin(self, name: str, action: str) -> NotebookRecord:
        """Move the notebook to the action's IN PROGRESS status, or refuse: the action cannot follow
        its status (a notebook being stopped cannot be rebooted, a stopped one cannot be stopped)."""
        with self.catalog.session() as s:
            row = self._row(s, name, lock=True)
            if row.status not in ALLOWED_FROM[action]:
                raise Protected(f"notebook {name!r} is {row.status}: it can be {_verb(action)} only when it is "
                                + " or ".join(ALLOWED_FROM[action]))
            row.status, row.reason, row.updated_at = IN_PROGRESS[action], "", utcnow()
            return _record(row)

    def set_status(self, name: str, status: str, reason: str = "", flow_run_id: str | None = None) -> NotebookRecord:
        with self.catalog.session() as s:
            row = self._row(s, name)
            row.status, row.reason, row.updated_at = status, reason, utcnow()
            if flow_run_id:
                row.flow_run_id = flow_run_id
            return _record(row)

    def set_run(self, name: str, flow_run_id: str) -> None:
        """Record the flow run of the action just queued (its status is the run's to change)."""
        with self.catalog.session() as s:
            row = s.scalar(select(Notebook).where(Notebook.name == name))
            if row is not None:
                row.flow_run_id = flow_run_id

    def rename(self, name: str, new_name: str) -> NotebookRecord:
        with self.catalog.session() as s:
            row = self._row(s, name, lock=True)
            if s.scalar(select(Notebook.id).where(Notebook.name == new_name)) is not None:
                raise AlreadyExists("notebook", new_name)
            row.name, row.spec, row.updated_at = new_name, {**row.spec, "name": new_name}, utcnow()
            return _record(row)

    def set_instance_type(self, name: str, new_type: str) -> NotebookRecord:
        """Change the instance type: only while STOPPED, only within the core type (CPU or GPU)."""
        wanted = instance_type(new_type)
        with self.catalog.session() as s:
            row = self._row(s, name, lock=True)
            if row.status != STOPPED:
                raise Protected(f"notebook {name!r} is {row.status}: stop it first (mlyard notebooks stop {name}); "
                                "the instance type changes only while it is STOPPED")
            current = instance_type(row.spec["instance_type"])
            if wanted.core_type != current.core_type:
                raise Protected(f"notebook {name!r} runs on {current.name} ({current.core_type}); it can change only "
                                f"to another {current.core_type} type, not {wanted.name} ({wanted.core_type})")
            row.spec, row.updated_at = {**row.spec, "instance_type": new_type}, utcnow()
            return _record(row)

    def remove(self, name: str) -> None:
        with self.catalog.session() as s:
            row = s.scalar(select(Notebook).where(Notebook.name == name))
            if row is not None:
                s.delete(row)


def _verb(action: str) -> str:
    return {"stop": "stopped", "start": "started", "reboot": "rebooted", "delete": "deleted",
            "create": "created"}[action]
