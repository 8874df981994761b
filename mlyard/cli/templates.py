"""`mlyard templates ...`: saved training specs to start trainings from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml

from mlyard.cli.common import JSON, SETS, ask, emit, err, guard, out, parse_sets, typer_app
from mlyard.commands import act, relocated_spec

app = typer_app("Saved training specs to start trainings from.")


def _brief(t: dict) -> dict:
    """A template (as its as_dict) in one row."""
    spec = t["spec"]
    return {"name": t["name"], "project": t.get("project", "default"), "description": t["description"],
            "created_at": t["created_at"][:19],
            "source_uri": spec["source_uri"], "entry_point": spec["entry_point"], "experiment": spec["experiment"]}


@app.command("create")
def templates_create(name: str, file: Path = typer.Option(..., "-f", "--file", help="Training spec (YAML)."),
                     description: str = typer.Option("", help="Shown in lists."), as_json: bool = JSON) -> None:
    """Save a training spec as a template (relative paths are stored absolute; for a platform reached with
    MLYARD_API_URL, local inputs are uploaded under MLYARD_UPLOAD_URI)."""
    def go():
        from mlyard.api import load
        from mlyard.core.specs import TrainingSpec

        spec = relocated_spec(load(TrainingSpec, file), lambda line: err.print(line, markup=False, highlight=False))
        return act("templates_create", name=name, spec=spec, description=description)

    emit(_brief(guard(go)), as_json)


@app.command("list")
def templates_list(as_json: bool = JSON) -> None:
    """Saved templates."""
    rows = [_brief(t) for t in guard(lambda: ask("templates_list"))]
    emit(rows, as_json, ["name", "project", "experiment", "source_uri", "entry_point", "created_at", "description"],
         empty="no templates yet: `mlyard templates create NAME -f train.yaml`")


@app.command("show")
def templates_show(name: str, as_json: bool = JSON) -> None:
    """A template's full spec (YAML, ready for `mlyard train -f`; --json: the template as JSON)."""
    t = guard(lambda: ask("templates_show", name=name))
    if as_json:
        emit(t, True)
        return
    from mlyard.core.specs import TrainingSpec

    spec = TrainingSpec.model_validate(t["spec"]).model_dump(mode="json", exclude_defaults=True)
    print(yaml.safe_dump(spec, sort_keys=False), end="")


@app.command("copy")
def templates_copy(name: str, new_name: str, sets: Optional[list[str]] = SETS, as_json: bool = JSON) -> None:
    """Copy a template under a new name (with optional overrides)."""
    emit(_brief(guard(lambda: act("templates_copy", name=name, new_name=new_name, sets=parse_sets(sets)))), as_json)


@app.command("delete")
def templates_delete(name: str) -> None:
    """Delete a template."""
    guard(lambda: act("templates_delete", name=name))
    out.print(f"deleted template {name}")
