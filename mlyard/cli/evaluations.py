"""`mlyard evaluate` and `mlyard evaluations ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.batches import LIMIT, list_kind
from mlyard.cli.common import JSON, POOL, SETS, SUBMIT, ask, emit, guard, out, platform, run_or_submit, stop, typer_app

app = typer_app("List, inspect, compare and delete model evaluations.")


def evaluate(
    file: Path = typer.Option(..., "-f", "--file", help="Evaluation spec (YAML): model, task, labelled input, "
                              "label_field; its fields: core/specs/evaluation.py."),
    sets: Optional[list[str]] = SETS,
    submit: bool = SUBMIT,
    pool: str = POOL,
    as_json: bool = JSON,
) -> None:
    """Evaluate a model on labelled CSV or JSONL data (at most 20 GB; classification: at most 50 classes).

    Classification: accuracy, F1, precision, recall, log loss, ROC AUC, PR AUC, confusion matrix and
    curves. Regression: MAE, MAPE, R², RMSE, RMSLE. A metric that does not apply is reported with why.
    """
    guard(lambda: run_or_submit("EVALUATION", file, sets, submit, pool, as_json, "evaluations show"))


@app.command("list")
def evaluations_list(limit: int = LIMIT, as_json: bool = JSON) -> None:
    """Evaluations with their model and status."""
    list_kind("EVALUATION", limit, as_json, "no evaluations yet: start one with `mlyard evaluate -f evaluation.yaml`")


@app.command("show")
def evaluations_show(evaluation_id: str, as_json: bool = JSON) -> None:
    """One evaluation: status, metrics, the metrics that do not apply (and why), its MLflow run and links."""
    emit(guard(lambda: ask("evaluations_show", evaluation_id=evaluation_id)), as_json)


@app.command("compare")
def evaluations_compare(ids: list[str] = typer.Argument(..., help="Two or more evaluation ids."),
                        out_dir: Path = typer.Option(Path("."), "--out", help="Where the PNG and JSON go."),
                        as_json: bool = JSON) -> None:
    """Metrics side by side and overlaid ROC/PR curves (a PNG here and in a new MLflow run)."""
    from mlyard import evaluations

    table, picture, run_id = guard(lambda: evaluations.compare(platform().tracking, ids, out_dir))
    if as_json:
        emit({"table": table, "picture": str(picture), "mlflow_run_id": run_id}, True)
        return
    columns = list(table[0]) if table else ["metric"]
    for row in table:
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = f"{v:.4f}"
    emit(table, False, columns, title="evaluations compared")
    out.print(f"curves: {picture}  (also in MLflow run {run_id})")


@app.command("stop")
def evaluations_stop(evaluation_id: str, as_json: bool = JSON) -> None:
    """Stop an evaluation (and its batch inference)."""
    stop("EVALUATION", evaluation_id, as_json)


@app.command("delete")
def evaluations_delete(evaluation_id: str) -> None:
    """Delete an evaluation and its batch inference's records; refused while it runs. Predictions stay."""
    from mlyard import evaluations

    guard(lambda: evaluations.delete(platform().tracking, evaluation_id))
    out.print(f"deleted evaluation {evaluation_id}")
