"""RAGs from Python (and the CLI's `mlyard rags`): create one over a folder of documents, sync it when
they change, look at its history, search it, ask it, delete it.

    import mlyard.rags as rags

    rags.create({"name": "handbook", "path": "docs/"}, wait=True)   # the first ingestion, a flow run
    rags.sync("handbook", wait=True)                                   # only what changed is embedded again
    rags.history("handbook")                                           # one record per ingestion
    rags.search("handbook", "How do I rotate a token?")                # the chunks a query would use
    rags.query("handbook", "How do I rotate a token?")                 # the LLM's answer and its sources

Ingestion is a Prefect flow run of the `rag-sync` deployment (also in the Prefect UI, and on a
schedule: target `rag-sync/rag-sync-local` with parameters `{"spec": {"rag": NAME}}`). Everything that can be
checked is checked before a RAG is recorded: its spec, its path, its vector store, its LLM endpoint.

A RAG belongs to the project it was made in (mlyard/rag_checks.py): its members see and ask it, an editor
makes, syncs and changes it, the project's owner deletes it. A team member's call (MLYARD_API_KEY) is made
by the platform, as them, through the mlyard API; their local folder is uploaded to their project first,
and they ask the RAG at the gateway with their key (or a token of its `token_endpoint`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlyard import rag_checks, sse
from mlyard.api import load as _spec
from mlyard.core.access import current
from mlyard.core.connection import connect
from mlyard.core.errors import Protected, RunFailed, SpecError
from mlyard.core.names import FLOW_RAG_SYNC, deployment
from mlyard.core.settings import Settings
from mlyard.core.specs.rag import RagSpec
from mlyard.tasks.rag_service import query_log, query_service_status, unwant_query_service, want_query_service
from mlyard.teams import acting_editor, acting_or_none, audited
from mlyard.warm_api import by_platform, member_api, member_command

_rags, _store = rag_checks.store, rag_checks.vectors


def _submit(record: Any) -> str:
    """Queue an ingestion (a flow run of rag-sync/rag-sync-local) as the RAG's project's and the caller's: the stack
    owner's through the warm mlyard API when it runs; a member's made here, by the platform's API."""
    from mlyard.core.access import run_tags

    actor, parameters, tags = current(), {"spec": {"rag": record.name}}, [f"mlyard.rag:{record.name}"]
    if actor.admin and acting_or_none(actor) == record.project:
        from mlyard.submit import submit

        return submit(deployment(FLOW_RAG_SYNC), parameters, tags=tags)["id"]
    from mlyard.tasks.orchestration import submit as make_run

    return str(make_run(deployment(FLOW_RAG_SYNC), parameters, None, [*tags, *run_tags(record.project, actor.name)]).id)


def create(spec: RagSpec | dict | str | Path, *, sets: dict[str, Any] | None = None, wait: bool = False,
           timeout_seconds: float = 3600) -> dict[str, Any]:
    """Record a RAG (CREATE REQUESTED) in the caller's project and start its first ingestion (CREATE IN
    PROGRESS, then ACTIVE); with `wait`, until it ends."""
    loaded = _spec(RagSpec, spec, sets).resolved(Path.cwd())
    if (url := member_api()) is not None:  # the platform records it, as them; their local folders uploaded first
        from mlyard.uploads import for_cluster
        from mlyard.warm_api import post

        area = post(url, "/v1/queries/run_check", {"flow": FLOW_RAG_SYNC, "spec": {}})["storage"]
        made = member_command("rags_create", spec=for_cluster(loaded, Settings(), area=area).model_dump(mode="json"))
    else:
        made = record(spec=loaded.model_dump(mode="json"))
    if wait:
        _wait(name=loaded.name, timeout_seconds=timeout_seconds, run_id=made["run_id"])
    return _finished(loaded.name, wait)


@audited("rag.create", lambda a: f"RAG {a['spec'].get('name')}", lambda a: acting_or_none(current()))
def record(spec: dict[str, Any]) -> dict[str, Any]:
    """Check and record the RAG `spec` in the caller's project (an editor's), and queue its first ingestion:
    {"name", "run_id"}. Nothing half-made: without its run, no record."""
    checked = _spec(RagSpec, spec)
    project, member = acting_editor("creating a RAG"), not current().admin
    settings = connect()
    if member:
        rag_checks.of_member(checked, project, settings)
    rag_checks.check(settings, checked, project if member else None)
    store = _rags(settings)
    made = store.create(checked.name, checked.model_dump(mode="json"), project)
    try:
        run_id = _submit(made)
    except Exception:
        store.remove(checked.name)
        raise
    want_query_service(settings.home_dir, made.id, checked)  # it loads while the documents are ingested
    return {"name": checked.name, "run_id": run_id}


def sync(name: str, *, wait: bool = False, timeout_seconds: float = 3600) -> dict[str, Any]:
    """Ingest the RAG's path again: only added and modified documents are embedded, deleted ones removed."""
    made = begin_sync(name)
    if wait:
        _wait(name=name, timeout_seconds=timeout_seconds, run_id=made["run_id"])
    return _finished(name, wait)


@by_platform("rags_sync", "commands")
@audited("rag.sync", lambda a: f"RAG {a['name']}", lambda a: acting_or_none(current()))
def begin_sync(name: str) -> dict[str, Any]:
    """Queue the RAG's sync (an editor's of its project): {"name", "run_id"}."""
    settings = connect()
    store = _rags(settings)
    found = rag_checks.in_reach(settings, name, "editor", "syncing a RAG")
    rag_checks.settle(settings, name)
    store.begin_sync(name)
    try:
        run_id = _submit(found)
    except Exception:
        store.set_status(name, "UPDATE FAILED", "its sync run could not be created")
        raise
    return {"name": name, "run_id": run_id}


def _wait(name: str, timeout_seconds: float, run_id: str) -> None:
    """Until the ingestion ends (the RAG leaves CREATE/UPDATE IN PROGRESS), printing nothing. A run that
    ended before it could say so (it failed to start, its process was killed) sets the failed status (a
    member's wait reads its status through the mlyard API, whose `show` does that)."""
    member = member_api() is not None
    settings: Any = None if member else connect()
    deadline = time.monotonic() + timeout_seconds
    checked = time.monotonic()
    while time.monotonic() < deadline:
        status = show(name)["status"] if member else _rags(settings).get(name).status
        if status not in ("CREATE REQUESTED", "CREATE IN PROGRESS", "UPDATE IN PROGRESS"):
            return
        if not member and time.monotonic() - checked > 5:  # has the run ended without saying so?
            checked = time.monotonic()
            rag_checks.settle(settings, name, run_id)  # a failed status it sets ends the wait at the next read
            continue
        time.sleep(1.0 if member else 0.2)  # one read of the catalog


def _finished(name: str, wait: bool) -> dict[str, Any]:
    view = show(name)
    if wait and view["status"] not in ("ACTIVE",):
        raise RunFailed(view["status"], None, view.get("reason") or f"see `mlyard rags history {name}`")
    return view


def _view(record: Any, settings: Settings | None = None) -> dict[str, Any]:
    spec = record.spec
    return {"name": record.name, "project": record.project, "status": record.status, "reason": record.reason,
            "deploy_status": query_service_status(settings.home_dir, record.name, record.deploy_status) if settings is not None else record.deploy_status, "description": spec.get("description", ""),
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


@by_platform("rags_list")
def list_rags() -> list[dict[str, Any]]:
    """The RAGs of the caller's projects."""
    from mlyard.runs import visible_projects

    settings, projects = connect(), visible_projects()
    for r in _rags(settings).all(projects):
        rag_checks.settle(settings, r.name)
    return [_view(r, settings) for r in _rags(settings).all(projects)]


@by_platform("rags_show")
def show(name: str) -> dict[str, Any]:
    """A RAG: its status, spec (the prompt in full), what its vector store holds, its last ingestion, and the
    gateway's base URL its queries take (OpenAI's clients: `base_url`)."""
    from mlyard.core.connection import gateway_url

    settings = connect()
    rag_checks.in_reach(settings, name)
    rag_checks.settle(settings, name)
    store = _rags(settings)
    record = store.get(name)
    view = _view(record, settings)
    view["base_url"] = f"{gateway_url(settings)}/rag/v1"
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


@by_platform("rags_update", "commands")
@audited("rag.update", lambda a: f"RAG {a['name']}", lambda a: acting_or_none(current()))
def update(name: str, sets: dict[str, Any]) -> dict[str, Any]:
    """Change what a RAG answers with, without ingesting again: its description, prompt template,
    top_k, and the LLM's max_tokens, temperature and timeout. Its query service takes the change within 2 s."""
    from mlyard.core.specs.common import merged

    settings = connect()
    store = _rags(settings)
    record = rag_checks.in_reach(settings, name, "editor", "changing a RAG")
    flat = {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in sets.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}
    wrong = sorted(k for k in flat if k not in UPDATABLE)
    if wrong:
        raise SpecError("--set", wrong[0], f"one of {', '.join(UPDATABLE)} (the rest needs a new RAG: its documents "
                                           "would be ingested again)")
    spec = _spec(RagSpec, merged(record.spec, sets))
    store.set_spec(name, spec.model_dump(mode="json"))
    return show(name)


@by_platform("rags_history")
def history(name: str, limit: int = 100) -> list[dict[str, Any]]:
    """One record per ingestion, newest first: counts, skipped files with the reason, duration, state."""
    settings = connect()
    found = rag_checks.in_reach(settings, name)
    rag_checks.settle(settings, name)
    return [_ingestion_view(h) for h in _rags(settings).history(found.id, limit)]


@by_platform("rags_delete", "commands")
@audited("rag.delete", lambda a: f"RAG {a['name']}", lambda a: acting_or_none(current()))
def delete(name: str) -> dict[str, Any]:
    """Delete a RAG and drop its vectors (its project owner's; refused while it is being created or deleted)."""
    settings = connect()
    rag_checks.in_reach(settings, name, "owner", "deleting a RAG")
    rag_checks.settle(settings, name)
    store = _rags(settings)
    record = store.begin_delete(name)
    try:
        with _store(settings, RagSpec.model_validate(record.spec), record.id) as vs:
            vs.drop()
    except Exception as exc:
        store.set_status(name, "DELETE FAILED", f"its vectors could not be dropped: {exc}")
        raise Protected(f"RAG {name!r} could not be deleted (DELETE FAILED): {exc}; delete it again") from exc
    unwant_query_service(settings.home_dir, name, record.id)
    store.remove(name)
    query_log(settings.home_dir, name).unlink(missing_ok=True)  # a new RAG of that name starts a log of its own
    return {"deleted": name}


def logs(name: str, tail: int = 20) -> list[dict[str, Any]]:
    """The last records of the RAG's request log, as endpoints keep them: one per query, search or
    embedding request its query service answered (status, time, first byte, the error's reason)."""
    from mlyard.serving.inference_log import tail as last
    from mlyard.tasks.rag_service import cluster_records
    settings = connect()
    rag_checks.in_reach(settings, name)
    return found if (found := cluster_records(name, tail)) is not None else last(query_log(settings.home_dir, name), tail)


def _asked(name: str, token: str | None) -> tuple[Settings | None, Any, str, str | None]:
    """Where the caller asks the RAG `name`: (this machine's settings, or None for a member; its record, or
    None; the gateway's base URL of its routes; the credential: `token`, else a member's own key)."""
    from mlyard.core.connection import gateway_url

    if member_api() is not None:  # at the gateway the platform names, with their key unless a token is given
        key = Settings().api_key
        return None, None, show(name)["base_url"], token or (key.get_secret_value() if key is not None else None)
    settings = connect()
    return settings, rag_checks.in_reach(settings, name), f"{gateway_url(settings)}/rag/v1", token


def _post(base: str, route: str, body: dict[str, Any], token: str | None, stream: bool = False,
          timeout: float = 300.0) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0))
    request = client.build_request("POST", f"{base}{route}", json=body, headers=headers)
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
    import httpx

    settings, record, base, token = _asked(name, token)
    body: dict[str, Any] = {"model": name, "query": question, **({"top_k": top_k} if top_k else {})}
    try:
        resp = _post(base, "/search", body, token)
    except httpx.TransportError as exc:
        if settings is None:
            raise Protected(f"RAG {name!r}: the gateway at {base} cannot be reached ({exc})") from exc
        resp = None  # no gateway: the query service is not there either; retrieve here
    if resp is not None and resp.status_code == 200:
        return [{"rank": h["index"], "file": h["file"], "where": h["where"], "score": h["score"], "text": h["text"]}
                for h in resp.json()["data"]]
    if resp is not None and (resp.status_code not in (502, 503) or settings is None):
        raise _answer_error(resp, name)
    assert settings is not None  # a member's search ended above
    from mlyard.tasks.embeddings import embedder

    spec = RagSpec.model_validate(record.spec)
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

    _, _, base, token = _asked(name, token)
    body = {"model": name, "messages": [{"role": "user", "content": question}], "stream": stream}
    t0 = time.monotonic()
    try:
        resp = _post(base, "/query", body, token, stream=stream)
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
    endpoint (the gateway counts a RAG as the endpoint `rag:NAME`); with `png`, a chart there too (drawn where
    the caller is)."""
    result = stats_view(name, since=since, until=until)
    if png is not None:
        from mlyard.serving.stats_plot import plot

        result["png"] = str(plot(result, Path(png).resolve()))
    return result


@by_platform("rags_stats")
def stats_view(name: str, since: str | float | None = "1h", until: str | float | None = None) -> dict[str, Any]:
    from mlyard.endpoints import gateway_stats

    settings = connect()
    rag_checks.in_reach(settings, name)
    return gateway_stats(settings, f"rag:{name}", since=since, until=until)
