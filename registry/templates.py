"""Training templates: saved TrainingSpecs in the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mlyard.core.access import DEFAULT_PROJECT
from mlyard.core.errors import AlreadyExists, TemplateNotFound
from mlyard.core.specs import TrainingSpec, load_spec
from mlyard.registry.catalog import Catalog
from mlyard.registry.tables import TrainingTemplate


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    description: str
    spec: TrainingSpec
    created_at: datetime
    project: str = DEFAULT_PROJECT

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "created_at": self.created_at.isoformat(),
                "spec": self.spec.model_dump(mode="json"), "project": self.project}


class Templates:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def create(self, name: str, spec: TrainingSpec, description: str = "", project: str = DEFAULT_PROJECT) -> TemplateInfo:
        _check_name(name)
        try:
            with self.catalog.session() as s:
                row = TrainingTemplate(name=name, description=description, spec=spec.model_dump(mode="json"),
                                       project=project)
                s.add(row)
                s.flush()
                return _info(row)
        except IntegrityError as exc:
            raise AlreadyExists("training template", name) from exc

    def list(self, projects: list[str] | None = None) -> list[TemplateInfo]:
        """Every template, or those of `projects`."""
        q = select(TrainingTemplate).order_by(TrainingTemplate.name)
        if projects is not None:
            q = q.where(TrainingTemplate.project.in_(projects))
        with self.catalog.session() as s:
            return [_info(r) for r in s.scalars(q)]

    def get(self, name: str) -> TemplateInfo:
        with self.catalog.session() as s:
            row = s.scalar(select(TrainingTemplate).where(TrainingTemplate.name == name))
            if row is None:
                raise TemplateNotFound(name)
            return _info(row)

    def copy(self, name: str, new_name: str, overrides: dict[str, Any] | None = None) -> TemplateInfo:
        """A copy in the same project."""
        src = self.get(name)
        spec = src.spec.with_overrides(overrides) if overrides else src.spec
        return self.create(new_name, spec, src.description, src.project)

    def delete(self, name: str) -> None:
        with self.catalog.session() as s:
            row = s.scalar(select(TrainingTemplate).where(TrainingTemplate.name == name))
            if row is None:
                raise TemplateNotFound(name)
            s.delete(row)

    def spec_for(self, name: str, overrides: dict[str, Any] | None = None) -> TrainingSpec:
        """The template's spec with `overrides` applied: what a training started from it runs."""
        spec = self.get(name).spec
        return spec.with_overrides(overrides) if overrides else spec


def _check_name(name: str) -> None:
    load_spec(TrainingSpec, {"name": name, "source_uri": ".", "entry_point": "x.py"}, source="template name")


def _info(row: TrainingTemplate) -> TemplateInfo:
    return TemplateInfo(row.name, row.description, TrainingSpec.model_validate(row.spec), row.created_at,
                        row.project or DEFAULT_PROJECT)
