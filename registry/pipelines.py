"""Uploaded pipelines in the catalog, and their rules, in one place:

- names are unique; a pipeline is recorded only once its file has been checked (nothing half-made);
- a pipeline being created cannot be deleted, nor one that schedules use (delete those first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from mlyard.core.errors import AlreadyExists, PipelineNotFound, Protected
from mlyard.registry.catalog import Catalog
from mlyard.registry.tables import Pipeline, Schedule


@dataclass(frozen=True)
class PipelineRecord:
    id: int
    name: str
    description: str
    pipeline_name: str
    status: str
    reason: str
    yaml_text: str
    created_at: datetime
    project: str = "default"


def _record(row: Pipeline) -> PipelineRecord:
    return PipelineRecord(row.id, row.name, row.description, row.pipeline_name, row.status, row.reason, row.yaml_text,
                          row.created_at, row.project)


class Pipelines:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def create(self, name: str, description: str, pipeline_name: str, yaml_text: str,
               status: str = "CREATE IN PROGRESS", project: str = "default") -> PipelineRecord:
        with self.catalog.session() as s:
            if s.scalar(select(Pipeline.id).where(Pipeline.name == name)) is not None:
                raise AlreadyExists("pipeline", name)
            row = Pipeline(name=name, description=description, pipeline_name=pipeline_name, yaml_text=yaml_text,
                           status=status, project=project)
            s.add(row)
            s.flush()
            return _record(row)

    def get(self, name: str) -> PipelineRecord:
        with self.catalog.session() as s:
            row = s.scalar(select(Pipeline).where(Pipeline.name == name))
            if row is None:
                raise PipelineNotFound(name)
            return _record(row)

    def all(self, projects: list[str] | None = None) -> list[PipelineRecord]:
        """Every pipeline, or those of `projects`."""
        query = select(Pipeline).order_by(Pipeline.id)
        if projects is not None:
            query = query.where(Pipeline.project.in_(projects))
        with self.catalog.session() as s:
            return [_record(r) for r in s.scalars(query)]

    def set_status(self, name: str, status: str, reason: str = "") -> None:
        with self.catalog.session() as s:
            row = s.scalar(select(Pipeline).where(Pipeline.name == name))
            if row is None:
                raise PipelineNotFound(name)
            row.status, row.reason = status, reason

    def schedules_using(self, name: str) -> list[str]:
        with self.catalog.session() as s:
            return [r.name for r in s.scalars(select(Schedule)) if (r.spec or {}).get("pipeline") == name]

    def delete(self, name: str) -> None:
        with self.catalog.session() as s:
            row = s.scalar(select(Pipeline).where(Pipeline.name == name))
            if row is None:
                raise PipelineNotFound(name)
            if row.status in ("CREATE REQUESTED", "CREATE IN PROGRESS"):
                raise Protected(f"pipeline {name!r} is {row.status}; wait until it is created, then delete it")
            using = [r.name for r in s.scalars(select(Schedule)) if (r.spec or {}).get("pipeline") == name]
            if using:
                raise Protected(f"pipeline {name!r} is used by schedule(s) {', '.join(using)}; delete those first "
                                "(`mlyard schedules delete NAME`)")
            s.delete(row)

    def as_dict(self, r: PipelineRecord) -> dict[str, Any]:
        return {"name": r.name, "project": r.project, "description": r.description, "pipeline_name": r.pipeline_name, "status": r.status,
                "reason": r.reason, "created_at": r.created_at.isoformat() if r.created_at else None}
