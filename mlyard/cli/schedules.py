"""`mlyard schedules ...`: cron or interval runs of a lifecycle deployment, with a window, catch-up
and a concurrency limit (mlyard/schedule.py); the scheduler of `mlyard up` creates the runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mlyard.cli.common import JSON, SETS, ask, emit, err, guard, out, parse_sets, typer_app

app = typer_app("Schedules: cron (six fields, seconds first, as Kubeflow) or interval runs of a deployment, "
                "with catch-up and a concurrency limit.")
COLUMNS = ["name", "project", "owner", "status", "trigger", "target", "max_concurrency", "catchup", "reason"]


def _api():
    import mlyard.schedule as api

    return api


def _print(view: dict[str, Any]) -> None:
    out.print(f"[bold]{view['name']}[/bold]  {view['status']}  {view['trigger']}  ->  {view['target']}"
              + (f"  reason: {view['reason']}" if view.get("reason") else ""), highlight=False, soft_wrap=True)
    out.print(f"read as: {view['read_as']} (zone {view['timezone']})", highlight=False, soft_wrap=True)
    out.print(f"window: {view.get('start_time') or 'from creation'} .. {view.get('end_time') or 'no end'};  "
              f"max concurrency {view['max_concurrency']} ({view['when_busy']} when busy);  catch-up "
              f"{'on' if view['catchup'] else 'off'};  slots {view.get('slots', {})}, missed {view.get('missed', 0)}",
              highlight=False, soft_wrap=True)
    if view.get("runs"):
        out.print("past runs (newest first):")
        emit(view["runs"], False, ["slot", "slot_state", "run_state", "lateness_seconds", "flow_run_id"])
    if view.get("queued"):
        out.print("made ahead of their slots: " + ", ".join(
            r["slot"] + (f" ({r['run_state']})" if r.get("run_state") else "") for r in view["queued"]),
                  highlight=False, soft_wrap=True)
    if "next" in view:
        out.print("next runs: " + (", ".join(view["next"]) if view["next"] else "none"), highlight=False,
                  soft_wrap=True)


@app.command("preview")
def schedules_preview(
    expression: str = typer.Argument(..., help="A cron expression: six fields, seconds first ('0 30 9 * * mon-fri'), "
                                     "a descriptor (@hourly, @every 1h30m), optionally after CRON_TZ=Zone."),
    start: Optional[str] = typer.Option(None, "--start", help="Fire times after this ISO-8601 time (default: now)."),
    tz: str = typer.Option("UTC", "--tz", help="The zone the expression's wall clock is read in (IANA name)."),
    count: int = typer.Option(5, "--count", help="How many fire times."), as_json: bool = JSON,
) -> None:
    """Show how an expression is read and its next fire times, before saving a schedule with it."""
    view = guard(lambda: _api().preview(expression, start=start, tz=tz, count=count))
    if as_json:
        emit(view, True)
        return
    out.print(f"read as: {view['read_as']} (zone {view['timezone']})", highlight=False, soft_wrap=True)
    if view.get("never_fires"):
        out.print(view["never_fires"], highlight=False)
    for t in view["next"]:
        out.print(t, highlight=False)


@app.command("create")
def schedules_create(
    file: Path = typer.Option(..., "-f", "--file", help="Schedule spec (YAML): name, deployment and parameters, "
                              "cron or interval, window, max_concurrency, catchup; fields: core/specs/schedule.py."),
    sets: Optional[list[str]] = SETS, as_json: bool = JSON,
) -> None:
    """Check a schedule against its deployment and save it; the scheduler confirms it (ENABLED or DISABLED).
    On a Kubernetes pool's deployment, local inputs are uploaded first (MLYARD_UPLOAD_URI), as with --submit."""
    view = guard(lambda: _api().create(file, sets=parse_sets(sets),
                                       echo=lambda line: err.print(line, markup=False, highlight=False)))
    emit(view, True) if as_json else _print(view)


@app.command("list")
def schedules_list(as_json: bool = JSON) -> None:
    """Schedules with their status (CREATE REQUESTED, CREATE FAILED, ENABLED, ENABLED(EXPIRED), DISABLED)."""
    emit(guard(lambda: ask("schedules_list")), as_json, COLUMNS,
         empty="no schedules yet: `mlyard schedules create -f schedule.yaml`")


@app.command("show")
def schedules_show(name: str, runs: int = typer.Option(10, "--runs", help="How many past runs."),
                   as_json: bool = JSON) -> None:
    """A schedule: settings, how its trigger reads, past runs with their Prefect states, next runs."""
    view = guard(lambda: ask("schedules_show", name=name, runs=runs))
    emit(view, True) if as_json else _print(view)


@app.command("enable")
def schedules_enable(name: str, as_json: bool = JSON) -> None:
    """Enable a schedule (with catch-up on, the slots missed while disabled run, oldest first)."""
    view = guard(lambda: _api().enable(name))
    emit(view, True) if as_json else _print(view)


@app.command("disable")
def schedules_disable(name: str, as_json: bool = JSON) -> None:
    """Disable a schedule: no new runs; runs already going go on."""
    view = guard(lambda: _api().disable(name))
    emit(view, True) if as_json else _print(view)


@app.command("copy")
def schedules_copy(name: str, new_name: str, sets: Optional[list[str]] = SETS, as_json: bool = JSON) -> None:
    """A new schedule with the same settings (override with --set), checked like any other."""
    view = guard(lambda: _api().copy(name, new_name, sets=parse_sets(sets)))
    emit(view, True) if as_json else _print(view)


@app.command("delete")
def schedules_delete(name: str, as_json: bool = JSON) -> None:
    """Delete a schedule (refused while a run it created is still going)."""
    emit(guard(lambda: _api().delete(name)), as_json)
