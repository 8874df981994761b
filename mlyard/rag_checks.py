"""What a RAG is checked against before it is recorded, and whose it is (mlyard/rags.py uses these):

- `check`: its path holds files, its vector store answers, its LLM endpoint exists, an embeddings service
  embeds;
- `settle`: a RAG whose ingestion run ended without saying so gets the failed status that run implies;
- `in_reach`: a RAG belongs to the project it was made in; one of a project the caller has no role in does
  not exist for them, and a smaller role than the action needs is refused naming the role;
- `of_member`: a team member's RAG reads their project's storage alone (its path, a model folder), keeps its
  vectors in the platform's own vector store, asks an LLM endpoint of their project (or a model or URL that
  needs no secret), and names no environment variable: the platform's ingestion and query processes hold
  the platform's environment, whose secrets are not a member's to send anywhere.
"""

from __future__ import annotations

from typing import Any

from mlyard.core.access import current
from mlyard.core.errors import RagNotFound, SpecError
from mlyard.core.settings import Settings
from mlyard.core.specs.rag import RagSpec


def store(settings: Settings):
    from mlyard.registry.catalog import shared
    from mlyard.registry.rags import Rags

    return Rags(shared(settings.catalog_db_url))


def vectors(settings: Settings, spec: RagSpec, rag_id: int):
    from mlyard.core.connection import read_state
    from mlyard.tasks.vectorstore import VectorStore, conninfo

    state = read_state(settings)
    return VectorStore(conninfo(spec.vector_store, settings, state.vector_store_url if state else None), rag_id)


def in_reach(settings: Settings, name: str, role: str = "viewer", action: str = "reading a RAG") -> Any:
    """The RAG `name` when the caller's role in its project allows `action`."""
    record = store(settings).get(name)
    current().need(record.project, role, action, lambda: RagNotFound(name))
    return record


def settle(settings: Settings, name: str, run_id: str | None = None) -> None:
    """A RAG whose ingestion run ended without saying so (its process was killed, or it failed before
    it began its ingestion record) is set to the failed status that run implies, so that it can be
    synced again. The run is the one of its RUNNING ingestion record, else `run_id`."""
    rags = store(settings)
    record = rags.get(name)
    if record.status not in ("CREATE IN PROGRESS", "UPDATE IN PROGRESS", "CREATE REQUESTED"):
        return
    history = rags.history(record.id, limit=1)
    running = history[0] if history and history[0].state == "RUNNING" and history[0].flow_run_id else None
    flow_run_id = running.flow_run_id if running is not None else run_id
    if flow_run_id is None:
        return
    ended, message = flow_run_state(flow_run_id)
    if ended in ("CRASHED", "FAILED", "CANCELLED"):
        failed = "UPDATE FAILED" if record.status == "UPDATE IN PROGRESS" else "CREATE FAILED"
        reason = f"its ingestion run {flow_run_id} ended {ended}" + (f": {message}" if message else "")
        if running is not None:
            rags.end_ingestion(running.id, "FAILED", running.counts, running.skipped, reason)
        rags.set_status(name, failed, reason)


def flow_run_state(flow_run_id: str) -> tuple[str | None, str]:
    """The state of a flow run and its message (why it failed)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(UUID(flow_run_id))
    except Exception:  # noqa: BLE001 - a deleted run: it ended
        return "CRASHED", "the run is gone"
    if fr.state is None:
        return None, ""
    return fr.state.type.value, (fr.state.message or "").removeprefix("Flow run encountered an exception: ")


def check(settings: Settings, spec: RagSpec, project: str | None = None) -> None:
    """What can be known before a RAG is recorded: the path holds files, the vector store answers, the
    LLM endpoint exists (with `project`: one of that project's), an embeddings service embeds."""
    from mlyard.core.errors import VectorStoreError
    from mlyard.core.settings import in_kubernetes_pod
    from mlyard.tasks.storage import Storage

    if in_kubernetes_pod():
        from mlyard.tasks.rag_cluster import refused

        refused(spec)

    if spec.llm.endpoint or spec.token_endpoint:
        from mlyard.registry.catalog import shared
        from mlyard.registry.endpoints import Endpoints

        projects = {e["name"]: e.get("project") for e in Endpoints(shared(settings.catalog_db_url)).all()}
        for field, endpoint, what in (("llm.endpoint", spec.llm.endpoint, "serves a chat model"),
                                      ("token_endpoint", spec.token_endpoint, "lends the RAG's route its tokens")):
            if endpoint and (endpoint not in projects or project is not None and projects[endpoint] != project):
                theirs = f" of project {project}" if project is not None else ""
                raise SpecError(field, endpoint, f"an endpoint{theirs} that exists (mlyard endpoints list) and {what}")
    Storage(settings).check(spec.path, field="path")
    try:
        with vectors(settings, spec, 0):
            pass
    except VectorStoreError as exc:
        raise SpecError("vector_store", spec.vector_store.kind, f"a vector store that answers ({exc})") from None
    if spec.embedding.url:
        from mlyard.core.errors import EmbeddingError
        from mlyard.tasks.embeddings import ServiceEmbedder

        try:
            ServiceEmbedder(spec.embedding, timeout=10.0)  # asks it to embed one text
        except (EmbeddingError, KeyError, ValueError, TypeError) as exc:
            why = str(exc) if isinstance(exc, EmbeddingError) else f"its answer is not OpenAI's embeddings shape ({exc!r})"
            raise SpecError("embedding.url", spec.embedding.url, f"an OpenAI-compatible embeddings service that "
                                                                 f"answers POST …/embeddings: {why}") from None


def of_member(spec: RagSpec, project: str, settings: Settings) -> None:
    """Refuse a member's RAG that reaches beyond their project (see the module), naming the field."""
    from mlyard.project_storage import confine

    if spec.vector_store.kind != "embedded":
        raise SpecError("vector_store.kind", spec.vector_store.kind, "embedded (the platform's own vector store): a "
                        "member's RAG connects to no other database with the platform's credentials")
    for field, variable in (("embedding.api_key_env", spec.embedding.api_key_env),
                            ("llm.api_key_env", spec.llm.api_key_env)):
        if variable:
            raise SpecError(field, variable, "unset: the platform's environment is not a member's to name (ask an "
                            "endpoint of your project through llm.endpoint, or a service that needs no key)")
    confine(spec, project, settings)
