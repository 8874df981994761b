"""The `mlyard` command line: a thin front door over flows/ and registry/.

Every listing prints a table for people and JSON with --json for scripts. Errors print one line
that says what was wrong and what to do, and exit with code 2 (bad input, broken rule) or 1 (a
training failed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from mlyard.errors import BatchFailed, MlyardError, SpecError, StackError, TrainingFailed
from mlyard.settings import Settings

app = typer.Typer(help="mlyard: ML lifecycle flows on Prefect 3 with MLflow as the registry.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
trainings_app = typer.Typer(help="List, inspect, stop and copy trainings.", no_args_is_help=True)
experiments_app = typer.Typer(help="MLflow experiments that group trainings.", no_args_is_help=True)
templates_app = typer.Typer(help="Saved training specs to start trainings from.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry (MLflow): models, versions, aliases.", no_args_is_help=True)
ui_app = typer.Typer(help="Open the web UIs of the embedded stack.", no_args_is_help=True)
tunings_app = typer.Typer(help="List, inspect, stop and copy hyperparameter tunings and their trials.", no_args_is_help=True)
batches_app = typer.Typer(help="List, inspect, stop and copy batch inferences.", no_args_is_help=True)
evaluations_app = typer.Typer(help="List, inspect, compare and delete model evaluations.", no_args_is_help=True)
for sub, name in ((trainings_app, "trainings"), (tunings_app, "tunings"), (batches_app, "batches"),
                  (evaluations_app, "evaluations"), (experiments_app, "experiments"), (templates_app, "templates"),
                  (models_app, "models"), (ui_app, "ui")):
    app.add_typer(sub, name=name)

# Scripts and pipes get wide tables rather than ids cut at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


# -- plumbing -----------------------------------------------------------------------------------

def _settings(connect: bool = True) -> Settings:
    from mlyard import stack

    settings = Settings()
    if connect:
        stack.connect(settings)
    return settings


def _platform():
    settings = _settings()  # before Prefect is imported: it reads its settings once
    from flows.platform import Platform

    return Platform(settings)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except TrainingFailed as exc:
        err.print(f"FAIL TRAIN: {exc}", style="red", highlight=False, markup=False)
        raise typer.Exit(1)
    except MlyardError as exc:
        err.print(f"error: {exc}", style="red", highlight=False, markup=False)
        raise typer.Exit(2)


def _emit(data: Any, as_json: bool, columns: list[str] | None = None, title: str | None = None) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if columns is None:  # a single record: key/value table
        table = Table(show_header=False, title=title)
        for k, v in (rows[0] if rows else {}).items():
            table.add_row(str(k), v if isinstance(v, str) else json.dumps(v, default=str))
    else:
        table = Table(title=title)
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    out.print(table)


def _stop(kind: str, run_id: str, as_json: bool) -> None:
    """Stop a run of `kind` (a name in mlyard.runs) like the UI's Cancel; print its new status."""
    from mlyard import runs

    _settings()
    info = _guard(lambda: runs.stop_run(getattr(runs, kind), run_id))
    _emit({"id": info.id, "name": info.name, "status": info.status}, as_json)


def _copied(kind: str, run_id: str, model, name: str | None, sets: list[str] | None):
    """The spec of a run of `kind` (a name in mlyard.runs), renamed (default <name>-copy) and overridden."""
    from mlyard import runs
    from mlyard.specs import load_spec

    _settings()
    info = runs.get_run(getattr(runs, kind), run_id)
    data = {**info.spec, "name": name or f"{info.spec['name'][:45]}-copy", **parse_sets(sets)}
    return load_spec(model, data, source=f"{info.spec['name']} ({run_id})")


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


def _spec_from(file: Optional[Path], template: Optional[str], sets: list[str] | None, platform=None):
    from mlyard.specs import TrainingSpec, load_spec_file

    overrides = parse_sets(sets)
    if template:
        platform = platform or _platform()
        extra = yaml.safe_load(file.read_text()) if file else {}
        return platform.templates.spec_for(template, {**(extra or {}), **overrides})
    if file is None:
        raise SpecError("-f", None, "a training spec file (-f train.yaml) or --template NAME")
    spec = load_spec_file(TrainingSpec, file)
    return spec.with_overrides(overrides) if overrides else spec


def _precheck(platform, spec) -> None:
    """Fail before anything starts when an input location is wrong (the flow checks again)."""
    from flows.training import check_locations

    check_locations.fn(platform, spec)


def _run_training(spec, submit: bool, pool: str, as_json: bool) -> None:
    from mlyard import stack

    platform = _platform()
    _precheck(platform, spec)
    if submit:
        if not stack.connect(platform.settings):
            raise StackError("--submit hands the training to a work pool: start the stack first with `mlyard up` "
                             "(or set MLYARD_PREFECT_API_URL)")
        from prefect.deployments import run_deployment

        job_variables = spec.job_variables() if pool == "gpu" else {}
        fr = run_deployment(f"train/{pool}", parameters={"spec": spec.model_dump(mode="json")}, timeout=0,
                            job_variables=job_variables)
        _emit({"training_id": str(fr.id), "flow_run": fr.name, "pool": pool, "status": "CREATE REQUESTED"}, as_json)
        if not as_json:
            out.print(f"follow it with: mlyard trainings show {fr.id}")
        return
    from flows.training import train

    state = train(spec, return_state=True)
    if state.is_completed():
        result = state.result()
        _emit(result.model_dump(), as_json)
        return
    if state.is_cancelled():
        _emit({"status": "STOPPED", "cause": state.message}, as_json)
        raise typer.Exit(1)
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, MlyardError):
        raise exc
    raise TrainingFailed(str(state.message))


# -- stack ---------------------------------------------------------------------------------------

@app.command()
def up() -> None:
    """Start the embedded stack: Prefect server (SQLite), the local pool with a worker, the deployments."""
    from mlyard import stack

    state = _guard(lambda: stack.up(_settings(connect=False), echo=out.print))
    out.print(f"Prefect UI: {state.ui_url}   (stop with `mlyard down`)")


@app.command()
def down() -> None:
    """Stop everything `mlyard up` and `mlyard ui` started."""
    from mlyard import stack

    stopped = stack.down(_settings(connect=False), echo=out.print)
    if not stopped:
        out.print("nothing was running")


@app.command()
def status(as_json: bool = JSON) -> None:
    """What runs, and the URLs of the Prefect UI and the MLflow UI."""
    from mlyard import stack

    info = stack.status(_settings(connect=False))
    if as_json:
        _emit(info, True)
        return
    procs = info.pop("processes")
    _emit({k: v for k, v in info.items()}, False, title="mlyard")
    if procs:
        _emit([{"process": n, **p} for n, p in procs.items()], False, ["process", "pid", "alive", "log"])


@ui_app.command("mlflow")
def ui_mlflow() -> None:
    """Start the MLflow UI on the embedded tracking store and print its URL."""
    from mlyard import stack

    url = _guard(lambda: stack.start_mlflow_ui(_settings(connect=False)))
    out.print(f"MLflow UI: {url}")


@ui_app.command("prefect")
def ui_prefect() -> None:
    """Print the Prefect UI URL (the server runs after `mlyard up`)."""
    from mlyard import stack

    info = stack.status(_settings(connect=False))
    if not info["running"]:
        err.print("the embedded stack is not running: start it with `mlyard up`")
        raise typer.Exit(2)
    out.print(f"Prefect UI: {info['prefect_ui']}")


# -- training ------------------------------------------------------------------------------------

@app.command()
def train(
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Training spec (YAML)."),
    template: Optional[str] = typer.Option(None, "--template", "-t", help="Start from this training template."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: --set hyperparameters.epochs=3"),
    submit: bool = typer.Option(False, "--submit", help="Hand it to a work pool (like Run in the UI) and print its id."),
    pool: str = typer.Option("local", "--pool", help="Work pool for --submit: local or gpu."),
    as_json: bool = JSON,
) -> None:
    """Run a training and stream its output; with --submit, queue it on a work pool instead."""
    def go():
        if pool not in ("local", "gpu"):
            raise SpecError("--pool", pool, "local or gpu")
        _run_training(_spec_from(file, template, sets), submit, pool, as_json)

    _guard(go)


@trainings_app.command("list")
def trainings_list(experiment: Optional[str] = typer.Option(None, help="Only this experiment."),
                   limit: int = typer.Option(50, help="At most this many, newest first."),
                   as_json: bool = JSON) -> None:
    """Trainings with their status (as the console names them) and how long they ran."""
    from mlyard.trainings import list_trainings

    _settings()
    rows = [t.as_dict() for t in _guard(lambda: list_trainings(limit, experiment))]
    for r in rows:
        r.pop("spec")
    _emit(rows, as_json, ["id", "name", "experiment", "status", "run_seconds", "created_at", "work_pool"])


@trainings_app.command("show")
def trainings_show(training_id: str, as_json: bool = JSON) -> None:
    """One training: status, cause of a failure, MLflow run and metrics."""
    from mlyard.trainings import get_training

    p = _platform()
    info = _guard(lambda: get_training(training_id)).as_dict()
    run = p.tracking.find_training_run(training_id)
    if run is not None:
        info["mlflow_run_id"] = run.info.run_id
        info["metrics"] = run.data.metrics
        info["artifact_uri"] = run.info.artifact_uri
    _emit(info, as_json)


@trainings_app.command("stop")
def trainings_stop(training_id: str, as_json: bool = JSON) -> None:
    """Stop a training: its whole process group is ended and it becomes STOPPED."""
    _stop("TRAINING", training_id, as_json)


@trainings_app.command("copy")
def trainings_copy(training_id: str,
                   name: Optional[str] = typer.Option(None, help="Name of the copy (default: <name>-copy)."),
                   sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field of the spec."),
                   submit: bool = typer.Option(False, "--submit", help="Queue the copy on a work pool."),
                   pool: str = typer.Option("local", "--pool"),
                   as_json: bool = JSON) -> None:
    """Start a new training with the same spec (and optional overrides)."""
    from mlyard.specs import TrainingSpec, load_spec
    from mlyard.trainings import get_training

    def go():
        _settings()
        src = get_training(training_id)
        spec = load_spec(TrainingSpec, src.spec, source=f"training {training_id}")
        overrides = {"name": name or f"{spec.name[:45]}-copy", **parse_sets(sets)}
        _run_training(spec.with_overrides(overrides), submit, pool, as_json)

    _guard(go)


# -- tuning --------------------------------------------------------------------------------------

def _run_tuning(spec, submit: bool, pool: str, as_json: bool) -> None:
    from mlyard import stack

    platform = _platform()
    from flows.tuning import resolve_training

    _precheck(platform, resolve_training(platform, spec))
    if submit:
        if not stack.connect(platform.settings):
            raise StackError("--submit hands the tuning to a work pool: start the stack first with `mlyard up`")
        from prefect.deployments import run_deployment

        fr = run_deployment(f"tune/{pool}", parameters={"spec": spec.model_dump(mode="json")}, timeout=0)
        _emit({"tuning_id": str(fr.id), "flow_run": fr.name, "pool": pool, "status": "CREATE REQUESTED"}, as_json)
        return
    from flows.tuning import tune as tune_flow

    state = tune_flow(spec, return_state=True)
    if state.is_completed():
        _emit(state.result().model_dump(), as_json)
        return
    if state.is_cancelled():
        _emit({"status": "STOPPED", "cause": state.message}, as_json)
        raise typer.Exit(1)
    exc = state.result(raise_on_failure=False)
    err.print(f"FAIL HYPERPARAMETER TUNING: {exc}", style="red", highlight=False, markup=False)
    raise typer.Exit(1)


@app.command()
def tune(
    file: Path = typer.Option(..., "-f", "--file", help="Tuning spec (YAML): training or template, strategy, parameters, objective."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: --set max_trials=20"),
    submit: bool = typer.Option(False, "--submit", help="Hand it to a work pool and print its id."),
    pool: str = typer.Option("local", "--pool", help="Work pool for --submit: local or gpu."),
    as_json: bool = JSON,
) -> None:
    """Run a hyperparameter tuning (strategies: grid, random, bayesian = Optuna's TPE) and stream its progress.

    bayesian uses TPE, a model-based sampler that handles int, double and categorical parameters
    together and needs no extra packages. Early stopping `median` is Katib's median stopping rule.
    """
    from mlyard.specs import TuningSpec, load_spec, load_spec_file

    def go():
        if pool not in ("local", "gpu"):
            raise SpecError("--pool", pool, "local or gpu")
        spec = load_spec_file(TuningSpec, file)
        overrides = parse_sets(sets)
        if overrides:
            spec = load_spec(TuningSpec, {**spec.model_dump(mode="json"), **overrides}, source=str(file))
        _run_tuning(spec, submit, pool, as_json)

    _guard(go)


@tunings_app.command("list")
def tunings_list(limit: int = typer.Option(50, help="At most this many, newest first."), as_json: bool = JSON) -> None:
    """Tunings with their status (COMPLETE carries its reason)."""
    from mlyard.tunings import list_tunings

    _settings()
    rows = [t.as_dict() for t in _guard(lambda: list_tunings(limit))]
    for r in rows:
        r.pop("spec")
    _emit(rows, as_json, ["id", "name", "status", "run_seconds", "created_at", "cause"])


@tunings_app.command("show")
def tunings_show(tuning_id: str, as_json: bool = JSON) -> None:
    """One tuning: status, trial counts and the best trial so far."""
    from mlyard.tunings import get_tuning, trials

    def go():
        p = _platform()
        info = get_tuning(tuning_id).as_dict()
        rows = trials(p.settings.catalog_db_url, tuning_id)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        info["trials"] = counts
        direction = info["spec"].get("objective", {}).get("direction", "maximize")
        done = [r for r in rows if r["state"] == "SUCCEEDED" and r["value"] is not None]
        if done:
            best = (max if direction == "maximize" else min)(done, key=lambda r: r["value"])
            info["best_trial"] = {"number": best["number"], "value": best["value"], "params": best["params"],
                                  "run_id": best["run_id"]}
        return info

    _emit(_guard(go), as_json)


@tunings_app.command("trials")
def tunings_trials(tuning_id: str, as_json: bool = JSON) -> None:
    """The trials of a tuning with their Katib states, hyperparameters and objective values."""
    from mlyard.tunings import get_tuning, trials

    def go():
        p = _platform()
        get_tuning(tuning_id)
        return trials(p.settings.catalog_db_url, tuning_id)

    rows = _guard(go)
    for r in rows:
        r["params"] = json.dumps(r["params"])
    _emit(rows, as_json, ["number", "state", "value", "params", "seconds", "reason", "run_id"])


@tunings_app.command("stop")
def tunings_stop(tuning_id: str, as_json: bool = JSON) -> None:
    """Stop a tuning: running trials are KILLED and it becomes STOPPED."""
    _stop("TUNING", tuning_id, as_json)


@tunings_app.command("copy")
def tunings_copy(tuning_id: str, name: Optional[str] = typer.Option(None, help="Name of the copy (default: <name>-copy)."),
                 sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field of the spec."),
                 submit: bool = typer.Option(False, "--submit"), pool: str = typer.Option("local", "--pool"),
                 as_json: bool = JSON) -> None:
    """Start a new tuning with the same spec (and optional overrides)."""
    from mlyard.specs import TuningSpec

    def go():
        _run_tuning(_copied("TUNING", tuning_id, TuningSpec, name, sets), submit, pool, as_json)

    _guard(go)


# -- batch inference and evaluation ----------------------------------------------------------------

def _load(model, file: Path, sets: list[str] | None):
    from mlyard.specs import load_spec, load_spec_file

    spec = load_spec_file(model, file)
    overrides = parse_sets(sets)
    return load_spec(model, {**spec.model_dump(mode="json"), **overrides}, source=str(file)) if overrides else spec


def _run_flow(kind: str, flow_fn, deployment: str, spec, submit: bool, pool: str, as_json: bool) -> None:
    """Run `flow_fn(spec)` here and print its result, or hand it to `deployment/pool` (--submit)."""
    from mlyard import stack

    if pool not in ("local", "gpu"):
        raise SpecError("--pool", pool, "local or gpu")
    settings = _settings()
    if submit:
        if not stack.connect(settings):
            raise StackError(f"--submit hands the {kind} to a work pool: start the stack first with `mlyard up`")
        from prefect.deployments import run_deployment

        fr = run_deployment(f"{deployment}/{pool}", parameters={"spec": spec.model_dump(mode="json")}, timeout=0,
                            job_variables=spec.job_variables() if pool == "gpu" else {})
        _emit({"id": str(fr.id), "flow_run": fr.name, "pool": pool, "status": "CREATE REQUESTED"}, as_json)
        return
    state = flow_fn(spec, return_state=True)
    if state.is_completed():
        _emit(state.result().model_dump(), as_json)
        return
    if state.is_cancelled():
        _emit({"status": "STOPPED", "cause": state.message}, as_json)
        raise typer.Exit(1)
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, SpecError) or (isinstance(exc, MlyardError) and not isinstance(exc, BatchFailed)):
        raise exc
    from mlyard.runs import BATCH, EVALUATION

    fail = (BATCH if kind == "batch inference" else EVALUATION).fail
    err.print(f"{fail}: {exc}", style="red", highlight=False, markup=False)
    raise typer.Exit(1)


@app.command()
def batch(
    file: Path = typer.Option(..., "-f", "--file", help="Batch inference spec (YAML): model, input_uri, input_format, output_uri."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: --set workers=2"),
    submit: bool = typer.Option(False, "--submit", help="Hand it to a work pool and print its id."),
    pool: str = typer.Option("local", "--pool", help="Work pool for --submit: local or gpu."),
    as_json: bool = JSON,
) -> None:
    """Run a batch inference: predictions for every row of the input files, one output file per input file.

    Rerunning a stopped or failed batch inference with the same spec and output_uri resumes it:
    finished shards are kept, the rest run again.
    """
    from mlyard.specs import BatchInferenceSpec

    def go():
        spec = _load(BatchInferenceSpec, file, sets)
        from flows.batch_inference import batch_infer

        _run_flow("batch inference", batch_infer, "batch-inference", spec, submit, pool, as_json)

    _guard(go)


def _list(kind, limit: int, as_json: bool) -> None:
    from mlyard.runs import list_runs

    _settings()
    rows = []
    for r in _guard(lambda: list_runs(kind, limit)):
        row = r.as_dict()
        spec = row.pop("spec")
        rows.append({**row, "model": spec.get("model")})
    _emit(rows, as_json, ["id", "name", "model", "status", "run_seconds", "created_at", "cause"])


@batches_app.command("list")
def batches_list(limit: int = typer.Option(50, help="At most this many, newest first."), as_json: bool = JSON) -> None:
    """Batch inferences with their status and how long they ran (an evaluation's own batch included)."""
    from mlyard.runs import BATCH

    _list(BATCH, limit, as_json)


@batches_app.command("show")
def batches_show(batch_id: str, as_json: bool = JSON) -> None:
    """One batch inference: status, cause of a failure, and its summary (rows, failed rows, rows/s)."""
    from mlyard.runs import BATCH, get_run

    def go():
        p = _platform()
        info = get_run(BATCH, batch_id).as_dict()
        from registry.tracking import TAG_BATCH_ID

        run_id = p.tracking.find_run({TAG_BATCH_ID: batch_id})
        if run_id:
            run = p.tracking.get_run(run_id)
            info["mlflow_run_id"] = run_id
            info["summary"] = {k: (int(v) if float(v).is_integer() else v) for k, v in run.data.metrics.items()}
        return info

    _emit(_guard(go), as_json)


@batches_app.command("stop")
def batches_stop(batch_id: str, as_json: bool = JSON) -> None:
    """Stop a batch inference: its workers end; finished shards are kept (rerun the spec to resume)."""
    _stop("BATCH", batch_id, as_json)


@batches_app.command("copy")
def batches_copy(batch_id: str, name: Optional[str] = typer.Option(None, help="Name of the copy (default: <name>-copy)."),
                 sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field, e.g. --set output_uri=..."),
                 submit: bool = typer.Option(False, "--submit"), pool: str = typer.Option("local", "--pool"),
                 as_json: bool = JSON) -> None:
    """Start a new batch inference with the same spec (give a new output_uri, or the same one to resume)."""
    from mlyard.specs import BatchInferenceSpec

    def go():
        spec = _copied("BATCH", batch_id, BatchInferenceSpec, name, sets)
        from flows.batch_inference import batch_infer

        _run_flow("batch inference", batch_infer, "batch-inference", spec, submit, pool, as_json)

    _guard(go)


@app.command()
def evaluate(
    file: Path = typer.Option(..., "-f", "--file", help="Evaluation spec (YAML): model, task, labelled input, label_field."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: --set model=digits@champion"),
    submit: bool = typer.Option(False, "--submit", help="Hand it to a work pool and print its id."),
    pool: str = typer.Option("local", "--pool", help="Work pool for --submit: local or gpu."),
    as_json: bool = JSON,
) -> None:
    """Evaluate a model on labelled CSV or JSONL data (at most 20 GB; classification: at most 50 classes).

    Classification: accuracy, F1, precision, recall, log loss, ROC AUC, PR AUC, confusion matrix and
    curves. Regression: MAE, MAPE, R², RMSE, RMSLE. A metric that does not apply is reported with why.
    """
    from mlyard.specs import EvaluationSpec

    def go():
        spec = _load(EvaluationSpec, file, sets)
        from flows.evaluation import evaluate as evaluate_flow

        _run_flow("evaluation", evaluate_flow, "evaluate", spec, submit, pool, as_json)

    _guard(go)


@evaluations_app.command("list")
def evaluations_list(limit: int = typer.Option(50, help="At most this many, newest first."), as_json: bool = JSON) -> None:
    """Evaluations with their model and status."""
    from mlyard.runs import EVALUATION

    _list(EVALUATION, limit, as_json)


@evaluations_app.command("show")
def evaluations_show(evaluation_id: str, as_json: bool = JSON) -> None:
    """One evaluation: status, metrics, the metrics that do not apply (and why), its MLflow run."""
    from mlyard import evaluations

    _emit(_guard(lambda: evaluations.show(_platform().tracking, evaluation_id)), as_json)


@evaluations_app.command("compare")
def evaluations_compare(ids: list[str] = typer.Argument(..., help="Two or more evaluation ids."),
                        out_dir: Path = typer.Option(Path("."), "--out", help="Where the PNG and JSON go."),
                        as_json: bool = JSON) -> None:
    """Metrics side by side and overlaid ROC/PR curves (a PNG here and in a new MLflow run)."""
    from mlyard import evaluations

    table, picture, run_id = _guard(lambda: evaluations.compare(_platform().tracking, ids, out_dir))
    if as_json:
        _emit({"table": table, "picture": str(picture), "mlflow_run_id": run_id}, True)
        return
    columns = list(table[0]) if table else ["metric"]
    for row in table:
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = f"{v:.4f}"
    _emit(table, False, columns, title="evaluations compared")
    out.print(f"curves: {picture}  (also in MLflow run {run_id})")


@evaluations_app.command("stop")
def evaluations_stop(evaluation_id: str, as_json: bool = JSON) -> None:
    """Stop an evaluation (and its batch inference)."""
    _stop("EVALUATION", evaluation_id, as_json)


@evaluations_app.command("delete")
def evaluations_delete(evaluation_id: str) -> None:
    """Delete an evaluation and its batch inference's records; refused while it runs. Predictions stay."""
    from mlyard import evaluations

    _guard(lambda: evaluations.delete(_platform().tracking, evaluation_id))
    out.print(f"deleted evaluation {evaluation_id}")


# -- experiments ---------------------------------------------------------------------------------

@experiments_app.command("create")
def experiments_create(name: str, description: str = typer.Option("", help="Shown in lists."), as_json: bool = JSON) -> None:
    """Create an experiment."""
    _emit(_guard(lambda: _platform().experiments.create(name, description)).as_dict(), as_json)


@experiments_app.command("list")
def experiments_list(as_json: bool = JSON) -> None:
    """Experiments with their number of trainings (and how many run now)."""
    rows = [e.as_dict() for e in _guard(lambda: _platform().experiments.list())]
    _emit(rows, as_json, ["id", "name", "trainings", "running", "created_at", "description"])


@experiments_app.command("delete")
def experiments_delete(name: str) -> None:
    """Delete an experiment; refused while work in it runs."""
    from mlyard.trainings import active_in_experiment

    def go():
        p = _platform()
        p.experiments.get(name)
        p.experiments.delete(name, other_running=active_in_experiment(name))

    _guard(go)
    out.print(f"deleted experiment {name}")


# -- templates -----------------------------------------------------------------------------------

@templates_app.command("create")
def templates_create(name: str, file: Path = typer.Option(..., "-f", "--file", help="Training spec (YAML)."),
                     description: str = typer.Option("", help="Shown in lists."), as_json: bool = JSON) -> None:
    """Save a training spec as a template."""
    from mlyard.specs import TrainingSpec, load_spec_file

    def go():
        spec = load_spec_file(TrainingSpec, file)
        return _platform().templates.create(name, spec, description)

    _emit(_brief_template(_guard(go)), as_json)


def _brief_template(t) -> dict:
    return {"name": t.name, "description": t.description, "created_at": t.created_at.isoformat(timespec="seconds"),
            "source_uri": t.spec.source_uri, "entry_point": t.spec.entry_point, "experiment": t.spec.experiment}


@templates_app.command("list")
def templates_list(as_json: bool = JSON) -> None:
    """Saved templates."""
    rows = [_brief_template(t) for t in _guard(lambda: _platform().templates.list())]
    _emit(rows, as_json, ["name", "experiment", "source_uri", "entry_point", "created_at", "description"])


@templates_app.command("show")
def templates_show(name: str) -> None:
    """A template's full spec (YAML, ready for `mlyard train -f`)."""
    t = _guard(lambda: _platform().templates.get(name))
    print(yaml.safe_dump(t.spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False), end="")


@templates_app.command("copy")
def templates_copy(name: str, new_name: str,
                   sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field of the spec."),
                   as_json: bool = JSON) -> None:
    """Copy a template under a new name (with optional overrides)."""
    _emit(_brief_template(_guard(lambda: _platform().templates.copy(name, new_name, parse_sets(sets)))), as_json)


@templates_app.command("delete")
def templates_delete(name: str) -> None:
    """Delete a template."""
    _guard(lambda: _platform().templates.delete(name))
    out.print(f"deleted template {name}")


# -- models --------------------------------------------------------------------------------------

@models_app.command("create")
def models_create(
    name: str,
    from_training: Optional[str] = typer.Option(None, "--from-training", help="Training id (must be COMPLETE)."),
    from_tuning: Optional[str] = typer.Option(None, "--from-tuning", help="Tuning id (COMPLETE): its best trial."),
    artifact_uri: Optional[str] = typer.Option(None, "--artifact-uri", help="External model: path, s3://, obs://, nas://."),
    framework: Optional[str] = typer.Option(None, help="Framework (detected from an MLflow model when omitted)."),
    framework_version: Optional[str] = typer.Option(None, "--framework-version"),
    params: Optional[list[str]] = typer.Option(None, "--param", help="Serving parameter key=value (repeatable)."),
    description: str = typer.Option("", help="Version description."),
    alias: Optional[str] = typer.Option(None, help="Point this alias at the new version."),
    as_json: bool = JSON,
) -> None:
    """Create a model version from a COMPLETE training, a COMPLETE tuning's best trial, or an external artifact."""
    import tempfile

    from mlyard.trainings import get_training

    def go():
        if sum(map(bool, (from_training, from_tuning, artifact_uri))) != 1:
            raise SpecError("--from-training/--from-tuning/--artifact-uri", None, "give exactly one of them")
        parameters = {k: str(v) for k, v in parse_sets(params).items()}
        p = _platform()
        if from_tuning:
            from mlyard.tunings import get_tuning

            t = get_tuning(from_tuning)
            parent = p.tracking.find_run({"mlyard.tuning_id": from_tuning, "mlyard.kind": "tuning"})
            best = p.tracking.get_run(parent).data.tags.get("mlyard.best_run_id") if parent else None
            best = None if best in (None, "None") else best
            mv = p.models.create_from_training(name, from_tuning, t.status, best, parameters=parameters,
                                               description=description, framework=framework,
                                               framework_version=framework_version, kind="tuning",
                                               lineage={"best_trial_run_id": best or ""})
        elif from_training:
            t = get_training(from_training)
            run = p.tracking.find_training_run(from_training)
            mv = p.models.create_from_training(name, from_training, t.status, run.info.run_id if run else None,
                                               parameters=parameters, description=description,
                                               framework=framework, framework_version=framework_version)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                local = p.storage.stage_in(artifact_uri, Path(tmp) / "model", "--artifact-uri")
                mv = p.models.create_from_directory(name, local, artifact_uri, parameters=parameters,
                                                    description=description, framework=framework,
                                                    framework_version=framework_version)
        if alias:
            mv = p.models.set_alias(name, alias, mv.version)
        return mv

    _emit(_guard(go).as_dict(), as_json)


@models_app.command("list")
def models_list(as_json: bool = JSON) -> None:
    """Models with their newest version and aliases."""
    def rows():
        res = []
        for m in _platform().models.list():
            last = m.versions[-1] if m.versions else None
            res.append({"name": m.name, "versions": len(m.versions), "latest": last.version if last else None,
                        "framework": last.framework if last else None,
                        "aliases": ", ".join(f"{a}->{v}" for a, v in m.aliases.items()), "description": m.description})
        return res

    _emit(_guard(rows), as_json, ["name", "versions", "latest", "framework", "aliases", "description"])


@models_app.command("show")
def models_show(ref: str = typer.Argument(..., help="name, name/version or name@alias"), as_json: bool = JSON) -> None:
    """A model with all its versions, or one version."""
    def go():
        p = _platform()
        if "/" in ref or "@" in ref:
            return p.models.resolve(ref).as_dict()
        return p.models.get(ref).as_dict()

    data = _guard(go)
    if as_json or "versions" not in data:
        _emit(data, as_json)
        return
    out.print(f"[bold]{data['name']}[/bold] {data['description']}  aliases: {data['aliases']}")
    _emit([{**v, "parameters": json.dumps(v["parameters"]), "lineage": json.dumps(v["lineage"])} for v in data["versions"]],
          False, ["version", "framework", "framework_version", "aliases", "parameters", "lineage", "source"])


@models_app.command("rename")
def models_rename(name: str, new_name: str) -> None:
    """Rename a model."""
    _guard(lambda: _platform().models.rename(name, new_name))
    out.print(f"renamed {name} -> {new_name}")


@models_app.command("describe")
def models_describe(name: str, description: str, version: Optional[str] = typer.Option(None, help="Describe this version only.")) -> None:
    """Set the description of a model (or of one version)."""
    _guard(lambda: _platform().models.describe(name, description, version))
    out.print("updated")


@models_app.command("alias")
def models_alias(name: str, alias: str, version: Optional[str] = typer.Argument(None, help="Version; omit with --delete."),
                 delete: bool = typer.Option(False, "--delete", help="Remove the alias.")) -> None:
    """Point an alias (e.g. champion) at a version, or remove it."""
    def go():
        p = _platform()
        if delete:
            p.models.delete_alias(name, alias)
            return f"removed alias {alias} of {name}"
        if version is None:
            raise SpecError("version", None, "the version the alias points at")
        p.models.set_alias(name, alias, version)
        return f"{name}@{alias} -> version {version}"

    out.print(_guard(go))


@models_app.command("delete")
def models_delete(name: str, version: Optional[str] = typer.Option(None, help="Delete only this version.")) -> None:
    """Delete a model or a version; refused while an endpoint serves it."""
    _guard(lambda: _platform().models.delete(name, version))
    out.print(f"deleted {name}" + (f" version {version}" if version else ""))


@app.command()
def demo(keep_running: bool = typer.Option(True, help="Leave the stack running to look at the UIs.")) -> None:
    """Start the stack, train the example on it, register the model, and say where to look."""
    from mlyard import demo as demo_mod

    _guard(lambda: demo_mod.run(_settings(connect=False), out, keep_running))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
