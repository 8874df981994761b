"""`mlyard train` and `mlyard trainings ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.errors import SpecError
from mlyard.cli.common import (
    JSON,
    POOL,
    SETS,
    SUBMIT,
    ask,
    copied,
    emit,
    guard,
    run_or_submit,
    stop,
    templates,
    typer_app,
)

app = typer_app("List, inspect, stop and copy trainings.")


def train(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Training spec (YAML); its fields: core/specs/training.py "
                                        "(TrainingSpec), or the train/local form in the Prefect UI."),
    template: Optional[str] = typer.Option(None, "--template", "-t", help="Start from this training template."),
    sets: Optional[list[str]] = SETS,
    submit: bool = SUBMIT,
    pool: str = POOL,
    as_json: bool = JSON,
) -> None:
    """Run a training and stream its output; with --submit, queue it on a work pool instead."""
    def go():
        if template:
            import yaml

            extra = yaml.safe_load(file.read_text()) if file else {}
            spec = templates().spec_for(template, extra or {})
        elif file is None:
            raise SpecError("-f", None, "a training spec file (-f train.yaml) or --template NAME")
        else:
            spec = file
        run_or_submit("TRAINING", spec, sets, submit, pool, as_json, "trainings show")

    guard(go)


@app.command("list")
def trainings_list(experiment: Optional[str] = typer.Option(None, help="Only this experiment."),
                   limit: int = typer.Option(50, help="At most this many, newest first."),
                   as_json: bool = JSON) -> None:
    """Trainings with their status (as the console names them) and how long they ran."""
    rows = guard(lambda: ask("trainings_list", limit=limit, experiment=experiment))
    for r in rows:
        r.pop("spec")
    emit(rows, as_json, ["id", "name", "experiment", "status", "run_seconds", "created_at", "work_pool"],
         empty="no trainings yet: start one with `mlyard train -f spec.yaml`")


@app.command("show")
def trainings_show(training_id: str, as_json: bool = JSON) -> None:
    """One training: status, cause of a failure, its MLflow run, metrics and links."""
    emit(guard(lambda: ask("trainings_show", training_id=training_id)), as_json)


@app.command("stop")
def trainings_stop(training_id: str, as_json: bool = JSON) -> None:
    """Stop a training: its whole process group is ended and it becomes STOPPED."""
    stop("TRAINING", training_id, as_json)


@app.command("copy")
def trainings_copy(training_id: str,
                   name: Optional[str] = typer.Option(None, help="Name of the copy (default: <name>-copy)."),
                   sets: Optional[list[str]] = SETS, submit: bool = SUBMIT, pool: str = POOL,
                   as_json: bool = JSON) -> None:
    """Start a new training with the same spec (and optional overrides)."""
    guard(lambda: run_or_submit("TRAINING", copied("TRAINING", training_id, name), sets, submit, pool, as_json,
                                "trainings show"))
