"""What every command group shares: output (tables or --json), one-line errors, --set, connecting,
and one run-or-submit path (the Python API's, mlyard/api.py).

Imports here stay light (typer, rich, yaml): Prefect and MLflow are imported by a command when it
runs, so `mlyard --help` answers at once.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from mlyard.core.errors import MlyardError, RunFailed, SpecError, TrainingStopped

# Scripts and pipes get wide tables rather than ids cut at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")
SETS = typer.Option(None, "--set", help="Override a field (merged into nested ones): --set FIELD.SUBFIELD=VALUE, "
                                        "e.g. hyperparameters.epochs=3 or llm.max_tokens=128")
SUBMIT = typer.Option(False, "--submit", help="Queue it on a work pool (like Run in the Prefect UI) and print its id.")
POOL = typer.Option("local", "--pool", help="Work pool for --submit: local or gpu.")
DEBUG = {"on": False}


def typer_app(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def say_error(message: str) -> None:
    err.print(message.replace("\n", " "), style="red", highlight=False, markup=False, soft_wrap=True)


def guard(fn: Callable[[], Any]) -> Any:
    """Run a command body: an mlyard error is one line on stderr and exit 2 (bad input, broken rule,
    no platform) or 1 (the run failed or was stopped); --debug shows the traceback instead."""
    try:
        return fn()
    except MlyardError as exc:
        if DEBUG["on"]:
            raise
        if isinstance(exc, RunFailed):
            say_error(str(exc))
            raise typer.Exit(1) from None
        if isinstance(exc, TrainingStopped):
            say_error(f"STOPPED: {exc}")
            raise typer.Exit(1) from None
        say_error(f"error: {exc}")
        raise typer.Exit(2) from None


def connected():
    """Settings of the running platform (raises NotConnected, saying how to start it, when none runs)."""
    from mlyard.core.connection import connect

    return connect()


def ask(query: str, /, **kwargs: Any) -> Any:
    """A read (a list, a show): answered by the stack's warm mlyard API, else here (mlyard/queries.py)."""
    from mlyard.queries import ask as _ask

    return _ask(query, **kwargs)


def platform():
    from mlyard.flows.platform import Platform

    return Platform(connected())


def emit(data: Any, as_json: bool, columns: list[str] | None = None, title: str | None = None,
         empty: str | None = None) -> None:
    """JSON for scripts, else a table: a list as rows of `columns`, one record as key/value pairs."""
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if columns is not None and not rows:
        out.print(empty or "none yet")
        return
    if columns is None:
        table = Table(show_header=False, title=title)
        for k, v in (rows[0] if rows else {}).items():
            table.add_row(str(k), v if isinstance(v, str) else json.dumps(v, default=str))
    else:
        table = Table(title=title)
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*("" if r.get(c) is None else _cell(r.get(c)) for c in columns))
    out.print(table)


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """`--set a.b=value` pairs to a nested dict; values are read as YAML scalars (3 -> int, true -> bool)."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SpecError("--set", pair, "key=value, e.g. --set hyperparameters.epochs=3")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = result
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return result


def run_or_submit(action_name: str, spec: Any, sets: list[str] | None, submit: bool, pool: str, as_json: bool,
                  show: str) -> None:
    """Check and run a spec here (streaming its log), or queue it on a work pool; print the result."""
    from mlyard import api

    action = getattr(api, action_name)
    result = api.run(action, spec, sets=parse_sets(sets), submit=submit, pool=pool,  # type: ignore[arg-type]
                     echo=lambda line: err.print(line, markup=False, highlight=False))
    if isinstance(result, api.Submitted):
        emit(result.as_dict(), as_json)
        if not as_json:
            out.print(f"follow it with: mlyard {show} {result.id}")
        return
    emit(result.model_dump(mode="json"), as_json)


def copied(kind: str, run_id: str, name: Optional[str]) -> dict[str, Any]:
    """The spec of a run of `kind` (a name in mlyard.runs) as a mapping, renamed (default <name>-copy)."""
    from mlyard import runs

    connected()
    info = runs.get_run(getattr(runs, kind), run_id)
    return {**info.spec, "name": name or f"{info.spec['name'][:45]}-copy"}


def stop(kind: str, run_id: str, as_json: bool) -> None:
    """Stop a run of `kind` (a name in mlyard.runs) like the UI's Cancel; print its new status."""
    from mlyard.commands import COMMANDS, act
    from mlyard.core.settings import Settings

    def go():
        settings = Settings()
        if settings.api_url or settings.api_key is not None:  # the platform's mlyard API stops it, as the caller
            return act("runs_stop", kind=kind, run_id=run_id)
        return COMMANDS["runs_stop"](kind=kind, run_id=run_id)

    info = guard(go)
    emit({"id": info["id"], "name": info["name"], "status": info["status"]}, as_json)

