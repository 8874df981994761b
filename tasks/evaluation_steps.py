"""A model evaluation's steps (the batch inference in between is a subflow): check the labelled input
and the classes, read labels and predictions back side by side and compute the metrics
(tasks/evaluation.py, pure), record metrics, pictures and the report in MLflow. Arguments are narrow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlyard.core.errors import BadRecord, BatchFailed, SpecError
from mlyard.core.names import TASK_RECORD
from mlyard.core.specs import MAX_CLASSES, MAX_EVALUATION_BYTES, EvaluationSpec
from mlyard.registry.tracking import Tracking
from mlyard.tasks.evaluation import Report, classification, plot_report, regression, thin_curves
from mlyard.tasks.metrics import Metric
from mlyard.tasks.orchestration import step_started
from mlyard.tasks.outputs import Layout
from mlyard.tasks.records import read_records
from mlyard.tasks.shards import select_files
from mlyard.tasks.storage import Storage

REPORT_PATH = "evaluation/evaluation.json"


@task(name="check-input", cache_policy=NO_CACHE)
def check_input(storage: Storage, spec: EvaluationSpec) -> list[tuple[str, str]]:
    """The labelled files: each ends in .csv or .jsonl as input_format says, together at most 20 GB."""
    names = storage.list(spec.input_uri, field="input_uri")
    wrong = [n for n in names if not n.endswith(f".{spec.input_format}")]
    if wrong and len(wrong) == len(names):
        raise SpecError("input_uri", spec.input_uri, f".{spec.input_format} files (input_format is "
                                                     f"{spec.input_format}); found {', '.join(wrong[:5])}")
    files = select_files(storage, spec.input_uri, [f"**/*.{spec.input_format}"], [])
    total = sum(storage.size(uri, "input_uri") for _, uri in files)
    if total > MAX_EVALUATION_BYTES:
        raise SpecError("input_uri", spec.input_uri, f"at most 20 GB of labelled data; it holds "
                                                     f"{total / 1024**3:.1f} GB in {len(files)} file(s). Sample it.")
    return files


def check_classes(spec: EvaluationSpec, model_classes: list[str] | None) -> list[str] | None:
    """The class names in the model's output order (None: taken from the labels seen)."""
    if spec.task != "classification":
        return None
    if model_classes is not None and len(model_classes) > MAX_CLASSES:
        raise SpecError("model", spec.model, f"a classifier with at most {MAX_CLASSES} classes; it has "
                                             f"{len(model_classes)}")
    if spec.class_names and model_classes is not None and len(spec.class_names) != len(model_classes):
        raise SpecError("class_names", spec.class_names, f"{len(model_classes)} names, one per class of the model "
                                                         f"({', '.join(model_classes[:10])})")
    return spec.class_names or model_classes


@task(name="compare", cache_policy=NO_CACHE)
def compare(storage: Storage, spec: EvaluationSpec, files: list[tuple[str, str]], names: list[str] | None,
            raw_classes: list[str] | None, scratch: Path) -> tuple[Report, int, int]:
    """Labels and predictions side by side, row by row, file by file; then the metrics."""
    layout = Layout(spec.output_uri)
    rename = dict(zip(raw_classes, names)) if raw_classes and names else {}
    y_true: list[Any] = []
    y_pred: list[Any] = []
    proba: list[np.ndarray] = []
    skipped = 0
    for name, uri in files:
        data = storage.stage_in(uri, scratch / "labels" / name.replace("/", "__"), "input_uri")
        preds = storage.stage_in(layout.output(name), scratch / "predictions" / name.replace("/", "__"), "output_uri")
        with open(preds, "rb") as pf:
            for (row, record, _), line in zip(read_records(data, spec.input_format), pf):
                pred = json.loads(line)
                if pred["row"] != row:
                    raise SpecError("output_uri", spec.output_uri, f"predictions aligned with {name}: row {row} "
                                                                   f"met prediction row {pred['row']}")
                label = None if isinstance(record, BadRecord) else record.get(spec.label_field)
                if label is None or "error" in pred:
                    skipped += 1
                    continue
                if spec.task == "classification":
                    y_true.append(rename.get(_key(label), _key(label)))
                    y_pred.append(rename.get(_key(pred["prediction"]), _key(pred["prediction"])))
                    if "probabilities" in pred:
                        proba.append(np.asarray(pred["probabilities"], dtype=np.float64))
                else:
                    y_true.append(float(label))
                    y_pred.append(float(pred["prediction"]))
    if not y_true:
        raise BatchFailed(f"no row could be compared: none has both a {spec.label_field!r} label and a prediction")
    if spec.task == "regression":
        return regression(y_true, y_pred), len(y_true), skipped
    probabilities = np.vstack(proba) if proba and len(proba) == len(y_true) else None
    return classification(y_true, y_pred, probabilities, names), len(y_true), skipped


def _key(value: Any) -> str:
    """Labels and predictions compare as text; 3 and 3.0 are the same class."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


@task(name=TASK_RECORD, cache_policy=NO_CACHE)
def record(tracking: Tracking, spec: EvaluationSpec, run_id: str, report: Report, rows: int, skipped: int, batch_id: str,
           model_uri: str, scratch: Path) -> str:
    """Metrics, pictures and the JSON report to MLflow; returns the report's artifact URI."""
    step_started(TASK_RECORD)
    now = int(time.time() * 1000)
    tracking.log_metrics(run_id, [Metric(k, v, 0, now) for k, v in report.values().items()])
    out = scratch / "evaluation"
    plot_report(report, out, title=spec.name)
    doc = {"evaluation": spec.name, "model": spec.model, "model_uri": model_uri, "batch_id": batch_id, "rows": rows,
           "skipped_rows": skipped, **report.as_dict()}
    doc["curves"] = thin_curves(doc["curves"])
    (out / "evaluation.json").write_text(json.dumps(doc, indent=1))
    tracking.log_artifacts(run_id, out, "evaluation")
    return f"{tracking.get_run(run_id).artifact_uri.rstrip('/')}/{REPORT_PATH}"

