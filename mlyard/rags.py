"""RAGs from Python (and the CLI's `mlyard rags`): create one over a folder of documents, sync it when
they change, look at its history, search it, ask it, delete it.

    import mlyard.rags as rags

    rags.create({"name": "handbook", "path": "docs/"}, wait=True)   # the first ingestion, a flow run
    rags.sync("handbook", wait=True)                                   # only what changed is embedded again
    rags.history("handbook")                                           # one record per ingestion
    rags.search("handbook", "How do I rotate a token?")                # the chunks a query would use
    rags.query("handbook", "How do I rotate a token?")                 # the LLM's answer and its sources

Ingestion is a Prefect flow run of the `rag-sync` deployment (also in the Prefect UI, and on a
schedule: target `rag-sync/local` with parameters `{"spec": {"rag": NAME}}`). Everything that can be
checked is checked before a RAG is recorded: its spec, its path, its vector store, its LLM endpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from core.connection import connect, read_state
from core.errors import Protected, RunFailed, SpecError
from core.names import FLOW_RAG_SYNC
from core.settings import Settings
from core.specs.rag import RagSpec
from mlyard import sse
from mlyard.api import load as _spec
from tasks.rag_service import query_log, query_service_status, unwant_query_service, want_query_service


def _rags(settings: Settings):
    from registry.catalog import Catalog
    from registry.rags import Rags

    return Rags(Catalog(settings.catalog_db_url))


def _store(settings: Settings, spec: RagSpec, rag_id: int):
    from tasks.vectorstore import VectorStore, conninfo

    state = read_state(settings)
    return VectorStore(conninfo(spec.vector_store, settings, state.vector_store_url if state else None), rag_id)


def _check(settings: Settings, spec: RagSpec) -> None:
    """What can be known before a RAG is recorded: the path holds files, the vector store answers, the
    LLM endpoint exists, an embeddings service embeds."""
    from core.errors import VectorStoreError
    from tasks.storage import Storage

    Storage(settings).check(spec.path, field="path")
    try:
        with _store(settings, spec, 0):
            pass
    except VectorStoreError as exc:
        raise SpecError("vector_store", spec.vector_store.kind, f"a vector store that answers ({exc})") from None
    if spec.llm.endpoint or spec.token_endpoint:
        from registry.catalog import Catalog
        from registry.endpoints import Endpoints

        names = {e["name"] for e in Endpoints(Catalog(settings.catalog_db_url)).all()}
        if spec.llm.endpoint and spec.llm.endpoint not in names:
            raise SpecError("llm.endpoint", spec.llm.endpoint, "an endpoint that exists (mlyard endpoints list) and "
                                                               "serves a chat model")
        if spec.token_endpoint and spec.token_endpoint not in names:
            raise SpecError("token_endpoint", spec.token_endpoint, "an endpoint that exists (mlyard endpoints list), "
                                                                   "whose tokens the RAG's route takes")
    if spec.embedding.url:
        from core.errors import EmbeddingError
        from tasks.embeddings import ServiceEmbedder

        try:
            ServiceEmbedder(spec.embedding, timeout=10.0)  # asks it to embed one text
        except (EmbeddingError, KeyError, ValueError, TypeError) as exc:
            why = str(exc) if isinstance(exc, EmbeddingError) else f"its answer is not OpenAI's embeddings shape ({exc!r})"
            raise SpecError("embedding.url", spec.embedding.url, f"an OpenAI-compatible embeddings service that "
                                                                 f"answers POST …/embeddings: {why}") from None


def _submit(name: str) -> str:
    """Queue an ingestion (a flow run of rag-sync/local; through the warm mlyard API when it runs)."""
    from mlyard.submit import submit

    return submit(f"{FLOW_RAG_SYNC}/local", {"spec": {"rag": name}}, tags=[f"mlyard.rag:{name}"])["id"]


def create(spec: RagSpec | dict | str | Path, *, sets: dict[str, Any] | None = None, wait: bool = False,
           timeout_seconds: float = 3600) -> dict[str, Any]:
    """Record a RAG (CREATE REQUESTED) and start its first ingestion (CREATE IN PROGRESS, then ACTIVE);
    with `wait`, until it ends."""
    spec = _spec(RagSpec, spec, sets).resolved(Path.cwd())
    settings = connect()
    _check(settings, spec)
    store = _rags(settings)
    record = store.create(spec.name, spec.model_dump(mode="json"))
    try:
        run_id = _submit(spec.name)
    except Exception:
        store.remove(spec.name)  # nothing half-made: no run, no record
        raise
    want_query_service(settings.home_dir, record.id, spec)  # it loads while the documents are ingested
    if wait:
        _wait(settings, spec.name, timeout_seconds, run_id)
    return _finished(spec.name, wait)


def sync(name: str, *, wait: bool = False, timeout_seconds: float = 3600) -> dict[str, Any]:
    """Ingest the RAG's path again: only added and modified documents are embedded, deleted ones removed."""
    settings = connect()
    store = _rags(settings)
    _settle(settings, name)
    store.begin_sync(name)
    try:
        run_id = _submit(name)
    except Exception:
        store.set_status(name, "UPDATE FAILED", "its sync run could not be created")
        raise
    if wait:
        _wait(settings, name, timeout_seconds, run_id)
    return _finished(name, wait)


def _wait(settings: Settings, name: str, timeout_seconds: float, run_id: str) -> None:
    """Until the ingestion ends (the RAG leaves CREATE/UPDATE IN PROGRESS), printing nothing. A run that
    ended before it could say so (it failed to start, its process was killed) sets the failed status."""
    store = _rags(settings)
    deadline = time.monotonic() + timeout_seconds
    checked = time.monotonic()
    while time.monotonic() < deadline:
        record = store.get(name)
        if record.status not in ("CREATE REQUESTED", "CREATE IN PROGRESS", "UPDATE IN PROGRESS"):
            return
        if time.monotonic() - checked > 5:  # every 5 s: has the run ended without saying so?
            checked = time.monotonic()
            _settle(settings, name, run_id)  # a failed status it sets ends the wait at the next read
            continue
        time.sleep(0.2)  # one read of the catalog


def _finished(name: str, wait: bool) -> dict[str, Any]:
    view = show(name)
    if wait and view["status"] not in ("ACTIVE",):
        raise RunFailed(view["status"], None, view.get("reason") or f"see `mlyard rags history {name}`")
    return view


def _settle(settings: Settings, name: str, run_id: str | None = None) -> None:
    """A RAG whose ingestion run ended without saying so (its process was killed, or it failed before
    it began its ingestion record) is set to the failed status that run implies, so that it can be
    synced again. The run is the one of its RUNNING ingestion record, else `run_id`."""
    store = _rags(settings)
    record = store.get(name)
    if record.status not in ("CREATE IN PROGRESS", "UPDATE IN PROGRESS", "CREATE REQUESTED"):
        return
    history = store.history(record.id, limit=1)
    running = history[0] if history and history[0].state == "RUNNING" and history[0].flow_run_id else None
    flow_run_id = running.flow_run_id if running is not None else run_id
    if flow_run_id is None:
        return
    ended, message = flow_run_state(flow_run_id)
    if ended in ("CRASHED", "FAILED", "CANCELLED"):
        failed = "UPDATE FAILED" if record.status == "UPDATE IN PROGRESS" else "CREATE FAILED"
        reason = f"its ingestion run {flow_run_id} ended {ended}" + (f": {message}" if message else "")
        if running is not None:
            store.end_ingestion(running.id, "FAILED", running.counts, running.skipped, reason)
        store.set_status(name, failed, reason)


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


def _view(record: Any, settings: Settings | None = None) -> dict[str, Any]:
    spec = record.spec
    return {"name": record.name, "status": record.status, "reason": record.reason,
            "deploy_status": query_service_status(settings.home_dir, record.name) if settings is not None else record.deploy_status, "description": spec.get("description", ""),
            "path": spec.get("path"), "vector_store": spec.get("vector_store", {}).get("kind"),
            "embedding": spec.get("embedding", {}).get("url") or spec.get("embedding", {}).get("model"),
            "llm": _llm_label(spec.get("llm", {})), "created_at": record.created_at.isoformat(),
            "updated_at": record.updated_at.isoformat()}


def _llm_label(llm: dict[str, Any]) -> str:
    if llm.get("endpoint"):
        return f"endpoint {llm['endpoint']} ({llm.get('model')})"
    if llm.get("base_url"):
        return f"{llm['base_url']} ({llm.get('model')})"
    return f"{llm.get('model', 'smollm2')} (local)"


def list_rags() -> list[dict[str, Any]]:
    settings = connect()
    for r in _rags(settings).all():
        _settle(settings, r.name)
    return [_view(r, settings) for r in _rags(settings).all()]


def show(name: str) -> dict[str, Any]:
    """A RAG: its status, spec (the prompt in full), what its vector store holds, its last ingestion."""
    settings = connect()
    _settle(settings, name)
    store = _rags(settings)
    record = store.get(name)
    view = _view(record, settings)
    view["spec"] = record.spec
    view["prompt"] = record.spec.get("prompt")
    try:
        with _store(settings, RagSpec.model_validate(record.spec), record.id) as vs:
            view["store"] = vs.counts()
    except Exception as exc:  # noqa: BLE001 - not ingested yet (no tables), or the store is away: say so
        view["store"] = {"error": str(exc).splitlines()[0]}
    last = store.history(record.id, limit=1)
    view["last_ingestion"] = _ingestion_view(last[0]) if last else None
    return view


def _ingestion_view(h: Any) -> dict[str, Any]:
    seconds = h.counts.get("seconds")
    if seconds is None and h.started_at is not None and h.ended_at is not None:
        seconds = (h.ended_at - h.started_at).total_seconds()
    return {"id": h.id, "state": h.state, "flow_run_id": h.flow_run_id,
            "started_at": h.started_at.isoformat() if h.started_at else None,
            "ended_at": h.ended_at.isoformat() if h.ended_at else None, "seconds": seconds,
            **{k: h.counts.get(k, 0) for k in ("added", "modified", "deleted", "unchanged", "chunks", "skipped",
                                                "failed")},
            "ingest_seconds": h.counts.get("ingest_seconds"), "embed_seconds": h.counts.get("embed_seconds"),
            "skipped_files": h.skipped, "reason": h.reason}


UPDATABLE = ("description", "prompt", "top_k", "llm.max_tokens", "llm.temperature", "llm.timeout_seconds", "llm.answer")


def update(name: str, sets: dict[str, Any]) -> dict[str, Any]:
    """Change what a RAG answers with, without ingesting again: its description, prompt template,
    top_k, and the LLM's max_tokens, temperature and timeout. Its query service takes the change within 2 s."""
    from core.specs.common import merged

    settings = connect()
    store = _rags(settings)
    record = store.get(name)
    flat = {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in sets.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}
    wrong = sorted(k for k in flat if k not in UPDATABLE)
    if wrong:
        raise SpecError("--set", wrong[0], f"one of {', '.join(UPDATABLE)} (the rest needs a new RAG: its documents "
                                           "would be ingested again)")
    spec = _spec(RagSpec, merged(record.spec, sets))
    store.set_spec(name, spec.model_dump(mode="json"))
    return show(name)


def history(name: str, limit: int = 100) -> list[dict[str, Any]]:
    """One record per ingestion, newest first: counts, skipped files with the reason, duration, state."""
    settings = connect()
    _settle(settings, name)
    store = _rags(settings)
    return [_ingestion_view(h) for h in store.history(store.get(name).id, limit)]


def delete(name: str) -> dict[str, Any]:
    """Delete a RAG and drop its vectors (refused while it is being created or deleted)."""
    settings = connect()
    _settle(settings, name)
    store = _rags(settings)
    record = store.begin_delete(name)
    try:
        with _store(settings, RagSpec.model_validate(record.spec), record.id) as vs:
            vs.drop()
    except Exception as exc:
        store.set_status(name, "DELETE FAILED", f"its vectors could not be dropped: {exc}")
        raise Protected(f"RAG {name!r} could not be deleted (DELETE FAILED): {exc}; delete it again") from exc
    unwant_query_service(settings.home_dir, name)
    store.remove(name)
    query_log(settings.home_dir, name).unlink(missing_ok=True)  # a new RAG of that name starts a log of its own
    return {"deleted": name}


def logs(name: str, tail: int = 20) -> list[dict[str, Any]]:
    """The last records of the RAG's request log, as endpoints keep them: one per query, search or
    embedding request its query service answered (status, time, first byte, the error's reason)."""
    from serving.inference_log import tail as last
    settings = connect()
    _rags(settings).get(name)
    return last(query_log(settings.home_dir, name), tail)


def _post(settings: Settings, route: str, body: dict[str, Any], token: str | None, stream: bool = False,
          timeout: float = 300.0) -> Any:
    import httpx

    from core.connection import gateway_url

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0))
    request = client.build_request("POST", f"{gateway_url(settings)}{route}", json=body, headers=headers)
    return client.send(request, stream=stream)


def _answer_error(resp: Any, name: str) -> Protected:
    try:
        message = resp.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - not OpenAI's shape
        message = resp.text[:300]
    if resp.status_code == 503:
        message += f" (the query service of {name} is starting; see `mlyard rags show {name}`)"
    return Protected(f"RAG {name!r}: {resp.status_code}: {message}")


def search(name: str, question: str, top_k: int | None = None, token: str | None = None) -> list[dict[str, Any]]:
    """The chunks a query would retrieve for `question`, best first, with their scores: through the
    query route (POST /rag/v1/search) once it runs, else embedded here."""
    settings = connect()
    record = _rags(settings).get(name)
    spec = RagSpec.model_validate(record.spec)
    import httpx

    body: dict[str, Any] = {"model": name, "query": question, **({"top_k": top_k} if top_k else {})}
    try:
        resp = _post(settings, "/rag/v1/search", body, token)
        if resp.status_code == 200:
            return [{"rank": h["index"], "file": h["file"], "where": h["where"], "score": h["score"], "text": h["text"]}
                    for h in resp.json()["data"]]
        if resp.status_code not in (502, 503):
            raise _answer_error(resp, name)
    except httpx.TransportError:
        pass  # no gateway: the query service is not there either; retrieve here
    from tasks.embeddings import embedder

    vector = embedder(spec.embedding).encode([question])[0]
    with _store(settings, spec, record.id) as vs:
        hits = vs.search(vector, top_k or spec.top_k)
    return [{"rank": i, "file": h.doc, "where": h.where, "score": round(h.score, 4), "text": h.text}
            for i, h in enumerate(hits, 1)]


def query(name: str, question: str, *, stream: bool = False, token: str | None = None,
          on_text: Any = None) -> dict[str, Any]:
    """Ask the RAG through its route (POST /rag/v1/query, as any OpenAI client would): the answer, its
    sources, and the time to the first token. With `stream`, `on_text(piece)` gets each piece as it comes."""
    import httpx

    settings = connect()
    _rags(settings).get(name)
    body = {"model": name, "messages": [{"role": "user", "content": question}], "stream": stream}
    t0 = time.monotonic()
    try:
        resp = _post(settings, "/rag/v1/query", body, token, stream=stream)
    except httpx.TransportError as exc:
        raise Protected(f"RAG {name!r}: the gateway cannot be reached ({exc}); is the platform up (`mlyard up`)?") from exc
    if resp.status_code != 200:
        resp.read()
        raise _answer_error(resp, name)
    if not stream:
        data = resp.json()
        return {"answer": data["choices"][0]["message"]["content"], "sources": data.get("sources", []),
                "citations_removed": data.get("citations_removed", 0),
                "seconds": round(time.monotonic() - t0, 3), "usage": data.get("usage")}
    pieces: list[str] = []
    sources: list[dict[str, Any]] = []
    first, removed = None, 0
    for chunk in sse.chunks(resp.iter_lines()):
        if "error" in chunk:
            raise Protected(f"RAG {name!r}: {chunk['error']['message']}")
        sources = chunk.get("sources") or sources
        removed = chunk.get("citations_removed", removed)
        piece = sse.delta_text(chunk)
        if piece:
            first = first if first is not None else time.monotonic() - t0
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
    resp.close()
    return {"answer": "".join(pieces), "sources": sources, "citations_removed": removed,
            "seconds": round(time.monotonic() - t0, 3),
            "first_token_seconds": round(first, 3) if first is not None else None}


def stats(name: str, *, since: str | float | None = "1h", until: str | float | None = None,
          png: str | Path | None = None) -> dict[str, Any]:
    """The query route's calls, failures and latency (mean, p50, p95, p99) over [since, until], as for an
    endpoint (the gateway counts a RAG as the endpoint `rag:NAME`); with `png`, a chart there too."""
    from mlyard.endpoints import gateway_stats

    settings = connect()
    _rags(settings).get(name)
    return gateway_stats(settings, f"rag:{name}", since=since, until=until, png=png)
