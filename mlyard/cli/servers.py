"""`mlyard servers ...`: VRidge's web points, as a thin face over one-stage endpoints. A created
server is PENDING until it answers, then RUNNING; stopping frees its replicas and keeps its
configuration; starting brings it back."""

from __future__ import annotations

from typing import Optional

import typer

from mlyard.cli.common import JSON, emit, guard, typer_app

app = typer_app("Inference servers (VRidge's web points): one model behind the gateway, started and stopped.")
COLUMNS = ["name", "status", "model", "replicas", "url", "reason"]


def _api():
    import mlyard.servers as api

    return api


@app.command("create")
def servers_create(name: str, model: str = typer.Option(..., "--model", help="The model version: name@alias or "
                                                         "name/version."),
                   pods: int = typer.Option(1, "--pods", help="Replicas."),
                   public: bool = typer.Option(False, "--public", help="Open to the public (no token needed)."),
                   description: str = typer.Option("", "--description"), as_json: bool = JSON) -> None:
    """Create a server and wait until it is RUNNING (or say why it failed)."""
    emit(guard(lambda: _api().server_create(name, model, pods=pods, public=public, description=description)), as_json)


@app.command("list")
def servers_list(as_json: bool = JSON) -> None:
    """Servers with their status (PENDING, RUNNING, STOPPED, FAILED)."""
    emit(guard(lambda: _api().servers()), as_json, COLUMNS, empty="no servers yet: `mlyard servers create NAME --model M`")


@app.command("show")
def servers_show(name: str, as_json: bool = JSON) -> None:
    """One server: id, status, model, replicas, URL."""
    emit(guard(lambda: _api().server_view(name)), as_json)


@app.command("stop")
def servers_stop(name: str, as_json: bool = JSON) -> None:
    """Stop a server: its replicas end, its configuration stays."""
    emit(guard(lambda: _api().server_stop(name)), as_json)


@app.command("start")
def servers_start(name: str, as_json: bool = JSON) -> None:
    """Start a stopped server again."""
    emit(guard(lambda: _api().server_start(name)), as_json)


@app.command("delete")
def servers_delete(name: str, as_json: bool = JSON) -> None:
    """Delete a server."""
    emit(guard(lambda: _api().delete(name)), as_json)


@app.command("stats")
def servers_stats(name: str, since: str = typer.Option("1h", "--since"), until: Optional[str] = typer.Option(None),
                  as_json: bool = JSON) -> None:
    """Its statistics: calls, failures, latency, predictions per class, average confidence."""
    from mlyard.cli.endpoints import endpoints_stats

    endpoints_stats(name, since=since, until=until, stage=None, model=None, png=None, as_json=as_json)


@app.command("history")
def servers_history(name: str, as_json: bool = JSON) -> None:
    """Which model version it served, from when to when."""
    emit(guard(lambda: _api().history(name)), as_json, ["stage", "model", "started_at", "ended_at", "note"])
