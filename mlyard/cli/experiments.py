"""`mlyard experiments ...`: MLflow experiments that group trainings."""

from __future__ import annotations

import typer

from mlyard.cli.common import JSON, ask, emit, guard, out, platform, typer_app

app = typer_app("MLflow experiments that group trainings.")


@app.command("create")
def experiments_create(name: str, description: str = typer.Option("", help="Shown in lists."), as_json: bool = JSON) -> None:
    """Create an experiment."""
    emit(guard(lambda: platform().experiments.create(name, description)).as_dict(), as_json)


@app.command("list")
def experiments_list(as_json: bool = JSON) -> None:
    """Experiments with their number of trainings (and how many run now)."""
    rows = guard(lambda: ask("experiments_list"))
    emit(rows, as_json, ["id", "name", "project", "trainings", "running", "created_at", "description"],
         empty="no experiments yet: `mlyard experiments create NAME`, or a training makes its own")


@app.command("delete")
def experiments_delete(name: str) -> None:
    """Delete an experiment; refused while work in it runs."""
    def go():
        from mlyard.trainings import active_in_experiment

        p = platform()
        p.experiments.get(name)
        p.experiments.delete(name, other_running=active_in_experiment(name))

    guard(go)
    out.print(f"deleted experiment {name}")
