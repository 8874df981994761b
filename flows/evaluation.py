"""Evaluate: measure a model on labelled data and record metrics, curves and a report in MLflow.

1. Check: the labelled files exist, end in .csv/.jsonl, and hold at most 20 GB; the model loads and
   has at most 50 classes; class_names fit it.
2. Open the MLflow run.
3. Run a batch inference over the data (a subflow: its own run, statuses and resume), label excluded.
4. Read the labels and the predictions back row by row, compute the metrics (tasks/evaluation.py).
5. Log metrics, pictures (PNG curves, confusion matrix) and the JSON report to MLflow.
"""

from __future__ import annotations

import shutil
import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from mlyard.core.names import (
    FLOW_EVALUATE,
    TAG_BATCH_ID,
    TAG_BATCH_RUN_ID,
    TAG_EVALUATION_ID,
    TAG_KIND,
    TAG_MODEL,
    TAG_MODEL_URI,
    TAG_PROJECT,
    TAG_STATUS_REASON,
    TAG_TASK,
    TASK_EVALUATION_BATCH,
)
from mlyard.core.specs import EvaluationSpec
from mlyard.flows.batch_inference import batch_infer
from mlyard.flows.platform import Platform
from mlyard.tasks import model_host
from mlyard.tasks.batch import load_model
from mlyard.tasks.evaluation_steps import check_classes, check_input, compare, record
from mlyard.tasks.orchestration import (
    link_mlflow_run,
    mark_started,
    prefect_link,
    run_name,
    run_project,
    stopped_on_interrupt,
)


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


@flow(name=FLOW_EVALUATE, flow_run_name=run_name(FLOW_EVALUATE), persist_result=True, on_crashed=[stopped_on_interrupt],
      description="Evaluate a model on labelled data: metrics, curves, confusion matrix, report.")
def evaluate(spec: EvaluationSpec) -> EvaluationResult:
    p = Platform()
    logger = get_run_logger()
    evaluation_id = str(flow_run.get_id() or f"local-{time.time_ns()}")
    scratch = p.scratch(spec.name)
    try:
        # 1. Check.
        files = check_input(p.storage, spec)
        model_uri, _, model = load_model(p.storage, p.models, spec.batch_spec(), scratch)
        model_host.close(model)  # its classes read: the batch inference below loads it again
        names = check_classes(spec, model.classes)

        # 2. MLflow run.
        run_id = p.tracking.start_run(spec.experiment, spec.name, tags={
            TAG_KIND: "evaluation", TAG_EVALUATION_ID: evaluation_id, TAG_MODEL: spec.model,
            TAG_MODEL_URI: model_uri, TAG_TASK: spec.task, **prefect_link(spec.description), TAG_PROJECT: run_project(),
        }, params={"model": model_uri, "input_uri": spec.input_uri, "label_field": spec.label_field, "task": spec.task,
                   "files": len(files)})
        p.tracking.log_datasets(run_id, {"labelled": spec.input_uri}, "evaluation")
        link_mlflow_run(p.tracking, run_id, "evaluation")
        try:
            # 3. Batch inference (a subflow).
            if flow_run.get_id():
                mark_started(flow_run.get_id(), TASK_EVALUATION_BATCH)
            state = batch_infer(spec.batch_spec(name=f"{spec.name}-batch"), return_state=True)
            if state.is_cancelled():
                p.tracking.set_tags(run_id, {TAG_STATUS_REASON: f"STOPPED: {state.message}"})
                p.tracking.end_run(run_id, "KILLED")
                return Cancelled(message=state.message or "STOPPED")
            batch = state.result()
            p.tracking.set_tags(run_id, {TAG_BATCH_ID: batch.batch_id, TAG_BATCH_RUN_ID: batch.run_id})
            # 4-5. Compare and record.
            report, rows, skipped = compare(p.storage, spec, files, names, batch.classes, scratch)
            report_uri = record(p.tracking, spec, run_id, report, rows, skipped, batch.batch_id, model_uri, scratch)
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


