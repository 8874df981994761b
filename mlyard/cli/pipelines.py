"""`mlyard pipelines ...` and `mlyard pipeline-runs ...`: compiled Kubeflow pipelines (IR YAML) uploaded,
drawn and run (mlyard/pipelines.py); each run is a Prefect flow run of the pipeline-run deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mlyard.cli.common import JSON, SETS, ask, emit, guard, out, parse_sets, typer_app

app = typer_app("Pipelines: compiled Kubeflow pipelines (IR YAML): upload, show, graph, delete.")
runs_app = typer_app("Pipeline runs: run an uploaded pipeline (kfp.local here, or a KFP server), follow each "
                     "step, list and download what the steps made.")
COLUMNS = ["name", "project", "status", "pipeline_name", "description", "schedules", "reason"]
RUN_COLUMNS = ["id", "name", "project", "status", "pipeline", "experiment", "created_at", "scheduled_time", "cause"]


def _api():
    import mlyard.pipelines as api

    return api


@app.command("upload")
def pipelines_upload(file: Path = typer.Argument(..., help="A compiled pipeline: the IR YAML that "
                                                 "kfp.compiler.Compiler().compile(...) writes."),
                     name: Optional[str] = typer.Option(None, "--name", help="Its name here (default: the pipeline's "
                                                        "own name)."),
                     description: str = typer.Option("", "--description"), as_json: bool = JSON) -> None:
    """Check a compiled pipeline with the KFP SDK and upload it (CREATE IN PROGRESS, then ACTIVE)."""
    view = guard(lambda: _api().upload(file, name=name, description=description))
    emit(view, True) if as_json else _print_pipeline(view)


def _print_pipeline(view: dict[str, Any]) -> None:
    out.print(f"[bold]{view['name']}[/bold]  {view['status']}  (pipeline {view['pipeline_name']}, kfp "
              f"{view.get('sdk_version', '?')})  {view.get('description', '')}", highlight=False, soft_wrap=True)
    emit(view["inputs"] or [], False, ["name", "type", "default", "optional"], empty="inputs: none")
    emit([{"component": k, "executor": v} for k, v in view["components"].items()], False, ["component", "executor"])
    emit([{"executor": k, **v, "packages": ", ".join(v.get("packages", []))} for k, v in view["executors"].items()],
         False, ["executor", "kind", "image", "packages"])
    if view.get("local_blockers"):
        out.print("cannot run here: " + "; ".join(view["local_blockers"]), highlight=False, soft_wrap=True)
    if view.get("schedules"):
        out.print("schedules: " + ", ".join(view["schedules"]), highlight=False)


@app.command("list")
def pipelines_list(as_json: bool = JSON) -> None:
    """Uploaded pipelines with their status (CREATE REQUESTED, CREATE IN PROGRESS, CREATE FAILED, ACTIVE)."""
    emit(guard(lambda: ask("pipelines_list")), as_json, COLUMNS,
         empty="no pipelines yet: `mlyard pipelines upload FILE --name NAME`")


@app.command("show")
def pipelines_show(name: str, as_json: bool = JSON) -> None:
    """A pipeline: inputs with types and defaults, components, executors, and whether it runs here."""
    view = guard(lambda: ask("pipelines_show", name=name))
    emit(view, True) if as_json else _print_pipeline(view)


@app.command("graph")
def pipelines_graph(name: str, image: Optional[Path] = typer.Option(None, "--out", help="Also draw it to a .png "
                                                                    "or .svg file."), as_json: bool = JSON) -> None:
    """The pipeline's DAG (sub-DAGs: nested pipelines, conditions, loops, exit handlers): a tree here,
    --out FILE.png|svg, --json for nodes (with their parent DAG) and edges."""
    g = guard(lambda: _api().graph(name, image=image))
    if as_json:
        emit({k: v for k, v in g.items() if k != "text"}, True)
        return
    out.print(g["text"], highlight=False, markup=False)
    if g.get("image"):
        out.print(f"drawn to {g['image']}", highlight=False)


@app.command("delete")
def pipelines_delete(name: str, as_json: bool = JSON) -> None:
    """Delete a pipeline (its project owner's; refused while it is being created, or while schedules use it)."""
    emit(guard(lambda: _api().delete(name)), as_json)


# -- runs --------------------------------------------------------------------------------------

def _print_run(view: dict[str, Any]) -> None:
    out.print(f"[bold]{view['name']}[/bold]  {view['status']}  pipeline {view['pipeline']}  experiment "
              f"{view['experiment']}  id {view['id']}" + (f"  cause: {view['cause']}" if view.get("cause") else ""),
              highlight=False, soft_wrap=True)
    nodes = [{"step": k, **v} for k, v in view.get("nodes", {}).items()]
    emit(nodes, False, ["step", "state", "runs", "failed"], empty="steps: none started yet")
    emit(view.get("outputs", []), False, ["task", "name", "bytes", "path"], empty="outputs: none")
    if view.get("links", {}).get("prefect"):
        out.print(f"Prefect: {view['links']['prefect']}", highlight=False, soft_wrap=True)


@runs_app.command("create")
def runs_create(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Pipeline run spec (YAML): name, pipeline, "
                                        "experiment, parameters, ...; fields: core/specs/pipeline.py."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="Or give the pipeline here (with --name)."),
    name: Optional[str] = typer.Option(None, "--name", help="The run's name."),
    params: Optional[list[str]] = typer.Option(None, "--param", help="A run parameter: --param epochs=3 (YAML value)."),
    sets: Optional[list[str]] = SETS,
    wait: bool = typer.Option(False, "--wait", help="Follow the run to its end (exit 1 if it fails)."),
    as_json: bool = JSON,
) -> None:
    """Run an uploaded pipeline: a flow run of pipeline-run/pipeline-run-local (like Run in the Prefect UI)."""
    import yaml

    def go() -> dict[str, Any]:
        spec: Any = file
        if file is None:
            spec = {"name": name or "", "pipeline": pipeline or ""}
        extra = parse_sets(sets) or {}
        for p in params or []:
            key, _, value = p.partition("=")
            extra.setdefault("parameters", {})[key] = yaml.safe_load(value)
        return _api().run(spec, sets=extra, wait=wait)

    view = guard(go)
    emit(view, True) if as_json else _print_run(view)


@runs_app.command("list")
def runs_list(as_json: bool = JSON) -> None:
    """Pipeline runs, newest first, with the console's statuses."""
    emit(guard(lambda: ask("pipeline_runs_list")), as_json, RUN_COLUMNS,
         empty="no pipeline runs yet: `mlyard pipeline-runs create --pipeline P --name N`")


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = JSON) -> None:
    """A pipeline run: status, each step's state, the files each step wrote, the Prefect link."""
    view = guard(lambda: ask("pipeline_runs_show", run_id=run_id))
    emit(view, True) if as_json else _print_run(view)


@runs_app.command("graph")
def runs_graph(run_id: str, image: Optional[Path] = typer.Option(None, "--out", help="Also draw it (.png or .svg)."),
               as_json: bool = JSON) -> None:
    """The run's DAG with each step's state."""
    g = guard(lambda: _api().run_graph(run_id, image=image) if image else ask("pipeline_runs_graph", run_id=run_id))
    if as_json:
        emit({k: v for k, v in g.items() if k != "text"}, True)
        return
    out.print(f"{g['status']}\n{g['text']}", highlight=False, markup=False)
    if g.get("image"):
        out.print(f"drawn to {g['image']}", highlight=False)


@runs_app.command("download")
def runs_download(run_id: str, dest: Path = typer.Argument(..., help="Where to copy them (task/name)."),
                  task: Optional[str] = typer.Option(None, "--task", help="Only this step's outputs."),
                  as_json: bool = JSON) -> None:
    """Copy a run's outputs and artifacts to a folder."""
    emit(guard(lambda: _api().download(run_id, dest, task=task)), as_json)


@runs_app.command("stop")
def runs_stop(run_id: str, as_json: bool = JSON) -> None:
    """Stop a pipeline run (its steps' processes are ended): STOP IN PROGRESS, then STOPPED."""
    view = guard(lambda: _api().stop(run_id))
    emit(view, True) if as_json else _print_run(view)


@runs_app.command("copy")
def runs_copy(run_id: str, sets: Optional[list[str]] = SETS, wait: bool = typer.Option(False, "--wait"),
              as_json: bool = JSON) -> None:
    """A new run with the same settings (override with --set name=... --set parameters.epochs=3)."""
    view = guard(lambda: _api().copy(run_id, sets=parse_sets(sets), wait=wait))
    emit(view, True) if as_json else _print_run(view)


@runs_app.command("delete")
def runs_delete(run_id: str, as_json: bool = JSON) -> None:
    """Delete a finished pipeline run and its outputs (its project owner's; refused while it runs)."""
    emit(guard(lambda: _api().delete_run(run_id)), as_json)
