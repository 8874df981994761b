"""`mlyard rags ...`: RAGs over folders of documents (mlyard/rags.py): create, sync, history, search,
query, delete. Ingestion is a Prefect flow run of the rag-sync deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mlyard.cli.common import JSON, SETS, ask, emit, guard, out, parse_sets, typer_app

app = typer_app("RAGs: documents kept as vectors in PostgreSQL + pgvector, answered through an LLM on an "
                "OpenAI-compatible route (POST /rag/v1/query).")
COLUMNS = ["name", "status", "deploy_status", "path", "embedding", "llm", "description", "reason"]
HISTORY_COLUMNS = ["id", "state", "started_at", "seconds", "added", "modified", "deleted", "unchanged", "chunks",
                   "skipped", "failed", "reason"]
WAIT = typer.Option(False, "--wait", help="Follow the ingestion to its end (exit 1 when it fails).")


def _api():
    import mlyard.rags as api

    return api


def _print(view: dict[str, Any]) -> None:
    out.print(f"[bold]{view['name']}[/bold]  {view['status']}"
              f"{'  query route ' + view['deploy_status'] if view.get('deploy_status') else ''}  {view['description']}",
              highlight=False, soft_wrap=True)
    if view.get("reason"):
        out.print(f"reason: {view['reason']}", highlight=False, soft_wrap=True)
    out.print(f"documents: {view['path']}\nvector store: {view['vector_store']}  {_store(view.get('store'))}\n"
              f"embedding: {view['embedding']}\nLLM: {view['llm']}", highlight=False, soft_wrap=True)
    last = view.get("last_ingestion")
    if last:
        out.print(f"last ingestion: {last['state']} ({last['added']} added, {last['modified']} modified, "
                  f"{last['deleted']} deleted, {last['unchanged']} unchanged, {last['chunks']} chunks, "
                  f"{last['skipped']} skipped, {last['failed']} unreadable)", highlight=False)
        for s in last["skipped_files"]:
            out.print(f"  skipped {s['name']}: {s['reason']}", highlight=False, markup=False, soft_wrap=True)


def _store(store: Any) -> str:
    if not store:
        return ""
    if "error" in store:
        return f"({store['error']})"
    return f"({store['documents']} documents, {store['chunks']} chunks)"


@app.command("create")
def rags_create(
    file: Path = typer.Option(..., "-f", "--file", help="RAG spec (YAML): name, path, and optionally vector_store, "
                              "embedding, llm, prompt, top_k; fields: core/specs/rag.py."),
    sets: Optional[list[str]] = SETS, wait: bool = WAIT, as_json: bool = JSON,
) -> None:
    """Check a RAG spec (path, vector store, LLM endpoint), record it and start its first ingestion."""
    view = guard(lambda: _api().create(file, sets=parse_sets(sets), wait=wait))
    emit(view, True) if as_json else _print(view)


@app.command("list")
def rags_list(as_json: bool = JSON) -> None:
    """RAGs with their status (CREATE REQUESTED ... ACTIVE, UPDATE IN PROGRESS, ... DELETE FAILED)."""
    emit(guard(lambda: ask("rags_list")), as_json, COLUMNS, empty="no RAGs yet: `mlyard rags create -f rag.yaml`")


@app.command("show")
def rags_show(name: str, prompt: bool = typer.Option(False, "--prompt", help="Print the prompt template in full."),
              as_json: bool = JSON) -> None:
    """A RAG: status, where its documents and vectors are, its models, its last ingestion."""
    view = guard(lambda: ask("rags_show", name=name))
    if as_json:
        emit(view, True)
    elif prompt:
        out.print(view["prompt"], highlight=False, markup=False)
    else:
        _print(view)


@app.command("update")
def rags_update(name: str, sets: Optional[list[str]] = SETS, as_json: bool = JSON) -> None:
    """Change the description, prompt template, top_k, llm.max_tokens, llm.temperature or
    llm.timeout_seconds (no new ingestion): --set prompt="...{context}...{question}..."; the query service takes it within 2 s."""
    view = guard(lambda: _api().update(name, parse_sets(sets)))
    emit(view, True) if as_json else _print(view)


@app.command("sync")
def rags_sync(name: str, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Ingest the RAG's path again: only added and modified documents are embedded; deleted ones leave."""
    view = guard(lambda: _api().sync(name, wait=wait))
    emit(view, True) if as_json else _print(view)


@app.command("history")
def rags_history(name: str, limit: int = typer.Option(20, "--limit"), as_json: bool = JSON) -> None:
    """One record per ingestion, newest first: counts, skipped files and why, duration, state."""
    rows = guard(lambda: ask("rags_history", name=name, limit=limit))
    if as_json:
        emit(rows, True)
        return
    emit(rows, False, HISTORY_COLUMNS, empty="no ingestion yet")
    for r in rows[:1]:
        for s in r["skipped_files"]:
            out.print(f"  skipped {s['name']}: {s['reason']}", highlight=False, markup=False, soft_wrap=True)


@app.command("delete")
def rags_delete(name: str, as_json: bool = JSON) -> None:
    """Delete a RAG and drop its vectors (refused while it is being created or deleted)."""
    emit(guard(lambda: _api().delete(name)), as_json)


TOKEN = typer.Option(None, "--token", help="A token, when the RAG's route takes tokens (token_endpoint).")


@app.command("query")
def rags_query(name: str, question: str, stream: bool = typer.Option(True, "--stream/--no-stream",
                                                                         help="Print the answer as it is written."),
               token: Optional[str] = TOKEN, as_json: bool = JSON) -> None:
    """Ask QUESTION through the RAG's route (POST /rag/v1/query): the answer, then its sources."""
    import sys

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = guard(lambda: _api().query(name, question, stream=stream, token=token,
                                        on_text=None if as_json else show))
    if as_json:
        emit(result, True)
        return
    if not stream:
        out.print(result["answer"], highlight=False, markup=False, soft_wrap=True)
    else:
        print()
    out.print("sources: " + "; ".join(f"[{s['index']}] {s['file']}{', ' + s['where'] if s['where'] else ''} "
                                      f"({s['score']:.2f})" for s in result["sources"]), highlight=False,
              soft_wrap=True)
    if result.get("citations_removed"):
        out.print(f"citations removed: {result['citations_removed']} (not among the sources, or not drawn on)",
                  highlight=False)


@app.command("search")
def rags_search(name: str, question: str, top_k: Optional[int] = typer.Option(None, "--top-k"),
                token: Optional[str] = TOKEN, as_json: bool = JSON) -> None:
    """The chunks a query for QUESTION would retrieve, best first, with their scores (no LLM)."""
    hits = guard(lambda: _api().search(name, question, top_k, token))
    if as_json:
        emit(hits, True)
        return
    for h in hits:
        where = f", {h['where']}" if h["where"] else ""
        out.print(f"[bold]{h['rank']}. {h['file']}{where}[/bold]  score {h['score']:.3f}", highlight=False)
        out.print("   " + h["text"][:400].replace("\n", " ") + ("…" if len(h["text"]) > 400 else ""),
                  highlight=False, markup=False, soft_wrap=True)


@app.command("stats")
def rags_stats(name: str, since: str = typer.Option("1h", "--since", help="From when: 30m, 2h, 1d or ISO-8601."),
               png: Optional[Path] = typer.Option(None, "--png", help="Also draw the chart to this file."),
               as_json: bool = JSON) -> None:
    """The query route's statistics, as for an endpoint: calls, failures, latency percentiles."""
    result = guard(lambda: _api().stats(name, since=since, png=png))
    if as_json:
        emit(result, True)
        return
    rows = [{"calls": r["calls"], "failures": r["failures"], **r["latency_ms"]} for r in result["stats"]]
    emit(rows, False, ["calls", "failures", "mean", "p50", "p95", "p99"],
         title=f"RAG {name}: {result['since']} .. {result['until']} (latency in ms)", empty=f"no queries to {name} "
                                                                                            "in that period")
    if result.get("png"):
        out.print(f"chart: {result['png']}")


@app.command("logs")
def rags_logs(name: str, tail: int = typer.Option(20, "--tail", help="How many records."), as_json: bool = JSON) -> None:
    """The last records of the query service's request log (time, level, body with status and timings)."""
    records = guard(lambda: ask("rags_logs", name=name, tail=tail))
    if as_json:
        emit(records, True)
        return
    emit([{"time": r.get("time"), "level": r.get("logLevel"), "inferenceId": r.get("inferenceId"),
           "body": r.get("body")} for r in records], False, ["time", "level", "inferenceId", "body"],
         empty=f"no requests to {name} logged yet")
