"""RAGs in the catalog, their ingestion history, and their rules, in one place:

- names are unique;
- a RAG being created or deleted cannot be deleted (nor synced);
- one ingestion at a time: a sync is refused while one runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from mlyard.core.access import DEFAULT_PROJECT
from mlyard.core.errors import AlreadyExists, Protected, RagNotFound
from mlyard.registry.catalog import Catalog
from mlyard.registry.tables import Rag, RagIngestion, utcnow

BUSY = ("CREATE REQUESTED", "CREATE IN PROGRESS", "DELETE IN PROGRESS")


@dataclass(frozen=True)
class RagRecord:
    id: int
    name: str
    spec: dict[str, Any]
    status: str
    reason: str
    deploy_status: str
    created_at: datetime
    updated_at: datetime
    project: str = "default"
    service_urls: dict[str, str] | None = None  # on a cluster: {"query": URL, "llm": URL} (tasks/rag_cluster.py)


@dataclass(frozen=True)
class IngestionRecord:
    id: int
    rag_id: int
    flow_run_id: str | None
    state: str
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    reason: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None


def _record(row: Rag) -> RagRecord:
    return RagRecord(row.id, row.name, dict(row.spec), row.status, row.reason, row.deploy_status, row.created_at,
                     row.updated_at, row.project, dict(row.service_urls) if row.service_urls else None)


def _ingestion(row: RagIngestion) -> IngestionRecord:
    return IngestionRecord(row.id, row.rag_id, row.flow_run_id, row.state, dict(row.counts or {}),
                           list(row.skipped or []), row.reason, row.started_at, row.ended_at)


class Rags:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def create(self, name: str, spec: dict[str, Any], project: str = "default") -> RagRecord:
        with self.catalog.session() as s:
            if s.scalar(select(Rag.id).where(Rag.name == name)) is not None:
                raise AlreadyExists("RAG", name)
            row = Rag(name=name, spec=spec, status="CREATE REQUESTED", project=project)
            s.add(row)
            s.flush()
            return _record(row)

    def get(self, name: str) -> RagRecord:
        with self.catalog.session() as s:
            row = s.scalar(select(Rag).where(Rag.name == name))
            if row is None:
                raise RagNotFound(name)
            return _record(row)

    def by_id(self, rag_id: int) -> RagRecord | None:
        with self.catalog.session() as s:
            row = s.get(Rag, rag_id)
            return _record(row) if row is not None else None

    def all(self, projects: list[str] | None = None) -> list[RagRecord]:
        """Every RAG, or those of `projects`."""
        query = select(Rag).order_by(Rag.id)
        if projects is not None:
            query = query.where(Rag.project.in_(projects))
        with self.catalog.session() as s:
            return [_record(r) for r in s.scalars(query)]

    def set_status(self, name: str, status: str, reason: str = "", deploy_status: str | None = None) -> RagRecord:
        with self.catalog.session() as s:
            row = s.scalar(select(Rag).where(Rag.name == name))
            if row is None:
                raise RagNotFound(name)
            row.status, row.reason, row.updated_at = status, reason, utcnow()
            if deploy_status is not None:
                row.deploy_status = deploy_status
            return _record(row)

    def set_spec(self, name: str, spec: dict[str, Any]) -> RagRecord:
        with self.catalog.session() as s:
            row = s.scalar(select(Rag).where(Rag.name == name))
            if row is None:
                raise RagNotFound(name)
            row.spec, row.updated_at = spec, utcnow()
            return _record(row)

    def set_deploy_status(self, name: str, deploy_status: str) -> None:
        with self.catalog.session() as s:
            row = s.scalar(select(Rag).where(Rag.name == name))
            if row is not None:
                row.deploy_status = deploy_status

    def set_service_urls(self, rag_id: int, urls: dict[str, str] | None, deploy_status: str) -> None:
        """Where the gateway reaches the RAG's query service on a cluster (and it its own LLM), or None: out of
        routing. By id: a RAG deleted meanwhile, or another made since under its name, is left alone."""
        with self.catalog.session() as s:
            row = s.get(Rag, rag_id)
            if row is not None:
                row.service_urls, row.deploy_status = urls, deploy_status

    def begin_sync(self, name: str) -> RagRecord:
        """UPDATE IN PROGRESS, unless the RAG is being created, deleted or already ingesting."""
        with self.catalog.session() as s:
            row = s.scalar(select(Rag).where(Rag.name == name).with_for_update())
            if row is None:
                raise RagNotFound(name)
            if row.status in BUSY or row.status == "UPDATE IN PROGRESS":
                raise Protected(f"RAG {name!r} is {row.status}; wait until it is ACTIVE (or UPDATE FAILED), then "
                                "sync it")
            row.status, row.reason, row.updated_at = "UPDATE IN PROGRESS", "", utcnow()
            return _record(row)

    def begin_delete(self, name: str) -> RagRecord:
        """DELETE IN PROGRESS, unless the RAG is being created or deleted."""
        with self.catalog.session() as s:
            row = s.scalar(select(Rag).where(Rag.name == name).with_for_update())
            if row is None:
                raise RagNotFound(name)
            if row.status in BUSY:
                raise Protected(f"RAG {name!r} is {row.status}; a RAG being created or deleted cannot be deleted. "
                                "Wait for it to finish, then delete it")
            row.status, row.updated_at = "DELETE IN PROGRESS", utcnow()
            return _record(row)

    def remove(self, name: str) -> None:
        with self.catalog.session() as s:
            row = s.scalar(select(Rag).where(Rag.name == name))
            if row is not None:
                s.delete(row)

    def routing(self, endpoints: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """What the gateway needs of every RAG, in the shape of an endpoint's (`endpoints`: what
        mlyard.registry.endpoints' routing read): its query service routes as the endpoint `rag:NAME`, stage
        `query`. It takes the tokens of the spec's `token_endpoint`, and the API keys of its project's members;
        a RAG of the `default` project without one is public (the one-person stack's), another project's never. On
        a cluster, its query Service (tasks/rag_cluster.py) as a stage resource's, serving the model `rag`, as the
        gateway's RAG route asks (a machine's query replicas are wanted so)."""
        with self.catalog.session() as s:
            out = {}
            for r in s.scalars(select(Rag)):
                guard = r.spec.get("token_endpoint")
                out[f"rag:{r.name}"] = {"id": r.id, "project": r.project, "default": "query",
                                        "public": not guard and r.project == DEFAULT_PROJECT,
                                        "stages": {"query": {"id": r.id, "status": r.status, "rules": [],
                                                             "max_replicas": 10, "services": {
                                                                 r.id: ("rag", query, "/health")}
                                                             if (query := (r.service_urls or {}).get("query")) else {}}},
                                        "tokens": endpoints.get(guard, {}).get("tokens", {}) if guard else {}}
            return out

    # -- ingestion history -----------------------------------------------------------------------

    def start_ingestion(self, rag_id: int, flow_run_id: str | None) -> IngestionRecord:
        with self.catalog.session() as s:
            row = RagIngestion(rag_id=rag_id, flow_run_id=flow_run_id, state="RUNNING", counts={}, skipped=[])
            s.add(row)
            s.flush()
            return _ingestion(row)

    def end_ingestion(self, ingestion_id: int, state: str, counts: dict[str, Any], skipped: list[dict[str, str]],
                      reason: str = "") -> IngestionRecord:
        with self.catalog.session() as s:
            row = s.get(RagIngestion, ingestion_id)
            assert row is not None
            row.state, row.counts, row.skipped, row.reason, row.ended_at = state, counts, skipped, reason, utcnow()
            return _ingestion(row)

    def history(self, rag_id: int, limit: int = 100) -> list[IngestionRecord]:
        with self.catalog.session() as s:
            q = select(RagIngestion).where(RagIngestion.rag_id == rag_id).order_by(RagIngestion.id.desc()).limit(limit)
            return [_ingestion(r) for r in s.scalars(q)]
