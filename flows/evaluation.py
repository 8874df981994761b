"""Evaluate: measure a model on labelled data and record metrics, curves and a report in MLflow.

1. Check: the labelled files exist, end in .csv/.jsonl, and hold at most 20 GB; the model loads and
   has at most 50 classes; class_names fit it.
2. Open the MLflow run.
3. Run a batch inference over the data (a subflow: its own run, statuses and resume), label excluded.
4. Read the labels and the predictions back row by row, compute the metrics (tasks/evaluation.py).
5. Log metrics, pictures (PNG curves, confusion matrix) and the JSON report to MLflow.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from flows.batch_inference import batch_infer, load_model
from flows.platform import Platform
from mlyard.errors import BadRecord, BatchFailed, SpecError
from mlyard.names import (
    FLOW_EVALUATE,
    TAG_BATCH_ID,
    TAG_BATCH_RUN_ID,
    TAG_EVALUATION_ID,
    TAG_KIND,
    TAG_MODEL,
    TAG_MODEL_URI,
    TAG_NOTE,
    TAG_STATUS_REASON,
    TAG_TASK,
    TASK_RECORD,
)
from mlyard.specs import MAX_CLASSES, MAX_EVALUATION_BYTES, EvaluationSpec
from tasks.evaluation import Report, classification, plot_report, regression, thin_curves
from tasks.metrics import Metric
from tasks.orchestration import prefect_link, stopped_on_interrupt
from tasks.outputs import Layout
from tasks.records import read_records
from tasks.shards import select_files

REPORT_PATH = "evaluation/evaluation.json"


class EvaluationResult(BaseModel):
    evaluation_id: str = Field(description="Prefect flow run id of the evaluation.")
    run_id: str = Field(description="MLflow run id holding metrics, pictures and the report.")
    batch_id: str = Field(description="The batch inference this evaluation ran.")
    model_uri: str
    task: str
    rows: int = Field(description="Labelled rows compared.")
    skipped_rows: int = Field(description="Rows without a label or whose prediction failed.")
    metrics: dict[str, float] = Field(description="The metrics that apply.")
    not_applicable: dict[str, str] = Field(description="Metric -> why it does not apply to this model or data.")
    report_uri: str = Field(description="MLflow artifact URI of the JSON report.")


@flow(name=FLOW_EVALUATE, flow_run_name="{spec.name}", on_crashed=[stopped_on_interrupt],
      description="Evaluate a model on labelled data: metrics, curves, confusion matrix, report.")
def evaluate(spec: EvaluationSpec) -> EvaluationResult:
    p = Platform()
    logger = get_run_logger()
    evaluation_id = str(flow_run.get_id() or f"local-{time.time_ns()}")
    scratch = p.scratch(spec.name)
    try:
        # 1. Check.
        files = check_input(p, spec)
        model_uri, _, model = load_model(p, spec.batch_spec(), scratch)
        names = check_classes(spec, model.classes)

        # 2. MLflow run.
        run_id = p.tracking.start_run(spec.experiment, spec.name, tags={
            TAG_KIND: "evaluation", TAG_EVALUATION_ID: evaluation_id, TAG_MODEL: spec.model,
            TAG_MODEL_URI: model_uri, TAG_TASK: spec.task, TAG_NOTE: spec.description, **prefect_link(),
        }, params={"model": model_uri, "input_uri": spec.input_uri, "label_field": spec.label_field, "task": spec.task,
                   "files": len(files)})
        try:
            # 3. Batch inference (a subflow).
            state = batch_infer(spec.batch_spec(name=f"{spec.name}-batch"), return_state=True)
            if state.is_cancelled():
                p.tracking.set_tags(run_id, {TAG_STATUS_REASON: f"STOPPED: {state.message}"})
                p.tracking.end_run(run_id, "KILLED")
                return Cancelled(message=state.message or "STOPPED")
            batch = state.result()
            p.tracking.set_tags(run_id, {TAG_BATCH_ID: batch.batch_id, TAG_BATCH_RUN_ID: batch.run_id})
            # 4-5. Compare and record.
            report, rows, skipped = compare(p, spec, files, names, batch.classes, scratch)
            report_uri = record(p, spec, run_id, report, rows, skipped, batch.batch_id, model_uri, scratch)
        except BaseException as exc:
            p.tracking.set_tags(run_id, {TAG_STATUS_REASON: f"FAIL MODEL EVALUATION: {exc}"[:5000]})
            p.tracking.end_run(run_id, "FAILED")
            raise
        p.tracking.end_run(run_id, "FINISHED")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shown = ", ".join(f"{k}={v:.4f}" for k, v in report.values().items())
    logger.info("evaluation %s COMPLETE on %d rows: %s", spec.name, rows, shown)
    return EvaluationResult(evaluation_id=evaluation_id, run_id=run_id, batch_id=batch.batch_id, model_uri=model_uri,
                            task=spec.task, rows=rows, skipped_rows=skipped, metrics=report.values(),
                            not_applicable={k: v.reason for k, v in report.metrics.items() if v.reason},
                            report_uri=report_uri)


@task(name="check-input", cache_policy=NO_CACHE)
def check_input(p: Platform, spec: EvaluationSpec) -> list[tuple[str, str]]:
    """The labelled files: each ends in .csv or .jsonl as input_format says, together at most 20 GB."""
    names = p.storage.list(spec.input_uri, field="input_uri")
    wrong = [n for n in names if not n.endswith(f".{spec.input_format}")]
    if wrong and len(wrong) == len(names):
        raise SpecError("input_uri", spec.input_uri, f".{spec.input_format} files (input_format is "
                                                     f"{spec.input_format}); found {', '.join(wrong[:5])}")
    files = select_files(p.storage, spec.input_uri, [f"**/*.{spec.input_format}"], [])
    total = sum(p.storage.size(uri, "input_uri") for _, uri in files)
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
def compare(p: Platform, spec: EvaluationSpec, files: list[tuple[str, str]], names: list[str] | None,
            raw_classes: list[str] | None, scratch: Path) -> tuple[Report, int, int]:
    """Labels and predictions side by side, row by row, file by file; then the metrics."""
    layout = Layout(spec.output_uri)
    rename = dict(zip(raw_classes, names)) if raw_classes and names else {}
    y_true: list[Any] = []
    y_pred: list[Any] = []
    proba: list[np.ndarray] = []
    skipped = 0
    for name, uri in files:
        data = p.storage.stage_in(uri, scratch / "labels" / name.replace("/", "__"), "input_uri")
        preds = p.storage.stage_in(layout.output(name), scratch / "predictions" / name.replace("/", "__"), "output_uri")
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
def record(p: Platform, spec: EvaluationSpec, run_id: str, report: Report, rows: int, skipped: int, batch_id: str,
           model_uri: str, scratch: Path) -> str:
    """Metrics, pictures and the JSON report to MLflow; returns the report's artifact URI."""
    now = int(time.time() * 1000)
    p.tracking.log_metrics(run_id, [Metric(k, v, 0, now) for k, v in report.values().items()])
    out = scratch / "evaluation"
    plot_report(report, out, title=spec.name)
    doc = {"evaluation": spec.name, "model": spec.model, "model_uri": model_uri, "batch_id": batch_id, "rows": rows,
           "skipped_rows": skipped, **report.as_dict()}
    doc["curves"] = thin_curves(doc["curves"])
    (out / "evaluation.json").write_text(json.dumps(doc, indent=1))
    p.tracking.log_artifacts(run_id, out, "evaluation")
    return f"{p.tracking.get_run(run_id).artifact_uri.rstrip('/')}/{REPORT_PATH}"

