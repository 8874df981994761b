"""Evaluations as users see them: flow runs of `evaluate` (statuses from mlyard/runs.py) with the
metrics and report their MLflow run holds; side-by-side comparison; deletion."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlyard import runs
from mlyard.core.errors import SpecError, StillRunning
from mlyard.core.names import TAG_BATCH_ID, TAG_EVALUATION_ID, TAG_EVALUATION_IDS
from mlyard.runs import ACTIVE_STATUSES, EVALUATION


def mlflow_run(tracking, evaluation_id: str):
    run_id = tracking.find_run({TAG_EVALUATION_ID: evaluation_id})
    return tracking.get_run(run_id) if run_id else None


def report(tracking, evaluation_id: str) -> dict[str, Any] | None:
    """The JSON report of a COMPLETE evaluation (None before it is written)."""
    run = mlflow_run(tracking, evaluation_id)
    if run is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download(run.run_id, "evaluation/evaluation.json", Path(tmp))
        except Exception:  # no report yet (running, failed)
            return None
        return json.loads(Path(path).read_text())


def show(tracking, evaluation_id: str) -> dict[str, Any]:
    info = runs.get_run(EVALUATION, evaluation_id).as_dict()
    evaluation_id = info["id"]  # the whole id, when a prefix of it was given
    run = mlflow_run(tracking, evaluation_id)
    if run is not None:
        info["mlflow_run_id"] = run.run_id
        info["experiment_id"] = run.experiment_id
        info["batch_id"] = run.tags.get(TAG_BATCH_ID)
        info["metrics"] = run.metrics
        info["artifact_uri"] = run.artifact_uri
        doc = report(tracking, evaluation_id)
        if doc:
            info["not_applicable"] = {k: v["not_applicable"] for k, v in doc["metrics"].items() if "not_applicable" in v}
            info["averaging"] = {k: v["average"] for k, v in doc["metrics"].items() if "average" in v}
            info["rows"], info["skipped_rows"] = doc["rows"], doc["skipped_rows"]
    return info


def compare(tracking, ids: list[str], out_dir: Path) -> tuple[list[dict[str, Any]], Path, str]:
    """Side-by-side metrics (a row per metric, a column per evaluation) and overlaid curves.

    The picture and the table go to `out_dir` and to a new MLflow run (kind evaluation-comparison)
    in the first evaluation's experiment; returns (table, picture path, that run's id)."""
    from mlyard.core.names import TAG_KIND
    from mlyard.tasks.evaluation import comparison_table, plot_comparison

    if len(ids) < 2:
        raise SpecError("ids", ids, "at least two evaluation ids to compare")
    reports: dict[str, dict[str, Any]] = {}
    experiment = None
    ids = [runs.get_run(EVALUATION, i).id for i in ids]  # whole ids, when prefixes were given
    for evaluation_id in ids:
        info = runs.get_run(EVALUATION, evaluation_id)
        doc = report(tracking, evaluation_id)
        if doc is None:
            raise SpecError("ids", evaluation_id, f"a COMPLETE evaluation; {info.name} is {info.status}")
        label = f"{info.name} ({doc['model']})"
        if label in reports:
            label = f"{label} {evaluation_id[:8]}"
        reports[label] = doc
        experiment = experiment or info.spec.get("experiment", "evaluations")
    if len({r["task"] for r in reports.values()}) > 1:
        raise SpecError("ids", ids, "evaluations of the same task (all classification or all regression)")
    table = comparison_table(reports)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "compare-" + "-".join(i[:8] for i in ids)
    picture = plot_comparison(reports, out_dir / f"{stem}.png")
    (out_dir / f"{stem}.json").write_text(json.dumps({"evaluations": ids, "labels": list(reports), "table": table},
                                                     indent=1))
    run_id = tracking.start_run(experiment, stem, tags={TAG_KIND: "evaluation-comparison",
                                                        TAG_EVALUATION_IDS: ",".join(ids)})
    tracking.log_artifact(run_id, picture, "comparison")
    tracking.log_artifact(run_id, out_dir / f"{stem}.json", "comparison")
    tracking.end_run(run_id, "FINISHED")
    return table, picture, run_id


def delete(tracking, evaluation_id: str) -> None:
    """Delete an evaluation: its flow run and its batch inference's, and their MLflow runs. Refused while
    it runs. The predictions under output_uri are the user's data and stay."""
    info = runs.get_run(EVALUATION, evaluation_id)
    evaluation_id = info.id
    if info.status in ACTIVE_STATUSES:
        raise StillRunning("evaluation", info.name, info.status, f"mlyard evaluations stop {evaluation_id}")
    batch_ids = runs.children(evaluation_id, runs.BATCH.flow)
    for run_id in filter(None, [tracking.find_run({TAG_EVALUATION_ID: evaluation_id}),
                                *(tracking.find_run({TAG_BATCH_ID: b}) for b in batch_ids)]):
        tracking.delete_run(run_id)
    runs.delete_flow_runs([*batch_ids, evaluation_id])
