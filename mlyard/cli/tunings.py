"""`mlyard tune` and `mlyard tunings ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.common import JSON, POOL, SETS, SUBMIT, ask, copied, emit, guard, run_or_submit, stop, typer_app

app = typer_app("List, inspect, stop and copy hyperparameter tunings and their trials.")


def tune(
    file: Path = typer.Option(..., "-f", "--file", help="Tuning spec (YAML): training or template, strategy, "
                              "parameters, objective; its fields: core/specs/tuning.py."),
    sets: Optional[list[str]] = SETS,
    submit: bool = SUBMIT,
    pool: str = POOL,
    as_json: bool = JSON,
) -> None:
    """Run a hyperparameter tuning (strategies: grid, random, bayesian = Optuna's TPE) and stream its progress.

    grid runs its points in the order listed (values as written; ranges from min to max by step).
    bayesian uses TPE, a model-based sampler for int, double and categorical parameters together.
    Early stopping `median` is Katib's median stopping rule.
    """
    guard(lambda: run_or_submit("TUNING", file, sets, submit, pool, as_json, "tunings show"))


@app.command("list")
def tunings_list(limit: int = typer.Option(50, help="At most this many, newest first."), as_json: bool = JSON) -> None:
    """Tunings with their status (COMPLETE carries its reason)."""
    rows = guard(lambda: ask("tunings_list", limit=limit))
    for r in rows:
        r.pop("spec")
    emit(rows, as_json, ["id", "name", "status", "run_seconds", "created_at", "cause"],
         empty="no tunings yet: start one with `mlyard tune -f tuning.yaml`")


@app.command("show")
def tunings_show(tuning_id: str, as_json: bool = JSON) -> None:
    """One tuning: status, trial counts, the best trial so far and links."""
    emit(guard(lambda: ask("tunings_show", tuning_id=tuning_id)), as_json)


@app.command("trials")
def tunings_trials(tuning_id: str, as_json: bool = JSON) -> None:
    """The trials of a tuning with their Katib states, hyperparameters and objective values.

    A trial that did not succeed shows the last value it reported marked `(partial)` (`partial: true`
    with --json): it is never a result, and never the best trial."""
    rows = guard(lambda: ask("tunings_trials", tuning_id=tuning_id))
    if not as_json:
        for r in rows:
            if r.get("partial"):
                r["value"] = f"{r['value']:g} (partial)"
    emit(rows, as_json, ["number", "state", "value", "params", "seconds", "reason", "run_id"], empty="no trials yet")


@app.command("stop")
def tunings_stop(tuning_id: str, as_json: bool = JSON) -> None:
    """Stop a tuning: running trials are KILLED and it becomes STOPPED."""
    stop("TUNING", tuning_id, as_json)


@app.command("copy")
def tunings_copy(tuning_id: str, name: Optional[str] = typer.Option(None, help="Name of the copy (default: <name>-copy)."),
                 sets: Optional[list[str]] = SETS, submit: bool = SUBMIT, pool: str = POOL,
                 as_json: bool = JSON) -> None:
    """Start a new tuning with the same spec (and optional overrides)."""
    guard(lambda: run_or_submit("TUNING", copied("TUNING", tuning_id, name), sets, submit, pool, as_json,
                                "tunings show"))
