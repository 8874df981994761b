"""Batch inference: run a model over every row of the input files and write predictions aligned to them.

1. Check: the model resolves and loads; the include/exclude globs leave input files; output_uri is
   empty or holds an interrupted run of this same job (which then resumes: finished shards are kept).
2. Stage in: the model once; remote input files to scratch disk (streamed, never into memory).
3. Plan shards (whole files, or line ranges of big JSONL files) and record the plan under output_uri.
4. Open the MLflow run.
5. Run the workers (RUNNING): in this process, as local processes, or as flow runs of a deployment.
6. Assemble files cut into shards; write the summary and the failures; log them to MLflow.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from mlyard.core.errors import TrainingStopped
from mlyard.core.names import FLOW_BATCH, TAG_BATCH_ID, TAG_KIND, TAG_MODEL, TAG_MODEL_URI, TAG_PROJECT
from mlyard.core.specs import BatchInferenceSpec, BatchJob, BatchShard
from mlyard.flows.platform import Platform
from mlyard.tasks import checks, model_host
from mlyard.tasks.batch import check_output, end_run, fingerprint, finish, load_model, run_workers, stage_inputs
from mlyard.tasks.orchestration import link_mlflow_run, prefect_link, run_name, run_project, stopped_on_interrupt
from mlyard.tasks.outputs import Layout
from mlyard.tasks.shards import plan, select_files


class BatchInferenceResult(BaseModel):
    batch_id: str = Field(description="Prefect flow run id of the batch inference.")
    run_id: str = Field(description="MLflow run id that holds the summary.")
    model_uri: str = Field(description="The model that ran (an alias resolved to its version).")
    output_uri: str
    files: int
    rows: int = Field(description="Rows read, failed ones included.")
    failed_rows: int
    failed_batches: int
    rows_per_second: float = Field(description="Rows processed by this run per second of its workers' wall time.")
    seconds: float
    resumed_shards: int = Field(description="Shards an earlier interrupted run had finished.")
    classes: list[str] | None = Field(description="Order of the probabilities (classifiers).")
    outputs: dict[str, str] = Field(description="Input file -> its predictions file.")
    empty_files: list[str] = Field(default_factory=list, description="Input files that hold no rows.")


@flow(name=FLOW_BATCH, flow_run_name=run_name(FLOW_BATCH), persist_result=True, on_crashed=[stopped_on_interrupt],
      description="Run a model over input files (JSON, JSONL, CSV) and write predictions.")
def batch_infer(spec: BatchInferenceSpec) -> BatchInferenceResult:
    p = Platform()
    logger = get_run_logger()
    batch_id = str(flow_run.get_id() or f"local-{time.time_ns()}")
    layout = Layout(spec.output_uri)
    scratch = p.scratch(spec.name)
    model = None
    try:
        # 1-2. Check (the output first: a model takes seconds to load in its sandbox) and stage in.
        checks.output_outside_input(spec.input_uri, spec.output_uri)
        checks.output_free(spec.output_uri, me=batch_id)  # one running batch per output_uri
        model_uri, model_path, model = load_model(p.storage, p.models, spec, scratch)
        logger.info("model %s runs on %s", model_uri, model.runtime)
        files = select_files(p.storage, spec.input_uri, spec.include, spec.exclude)
        manifest, done = check_output(p.storage, spec, layout, model_uri)
        sources = stage_inputs(p.storage, files, manifest, done, scratch)

        # 3. Plan (an interrupted run's plan is kept, so its finished shards still fit).
        if manifest is None:
            shards = plan([(name, Path(sources[name])) for name, _ in files], spec.input_format, spec.workers)
            manifest = {"fingerprint": fingerprint(spec, model_uri), "shards": [s.model_dump() for s in shards]}
            p.storage.write_bytes(layout.manifest, json.dumps(manifest, indent=1).encode(), "output_uri")
        shards = [BatchShard.model_validate(s) for s in manifest["shards"]]
        pending = [s for s in shards if s.key not in done]
        if done:
            logger.info("resuming: %d of %d shards were finished by an earlier run", len(shards) - len(pending), len(shards))

        # 4. MLflow run.
        run_id = p.tracking.start_run(spec.experiment, spec.name, tags={
            TAG_KIND: "batch_inference", TAG_BATCH_ID: batch_id, TAG_MODEL: spec.model,
            TAG_MODEL_URI: model_uri, **prefect_link(spec.description), TAG_PROJECT: run_project(),
        }, params={"model": model_uri, "input_uri": spec.input_uri, "input_format": spec.input_format,
                   "output_uri": spec.output_uri, "batch_size": spec.batch_size, "workers": spec.workers,
                   "runtime": model.runtime,
                   "inference_timeout_seconds": spec.inference_timeout_seconds, "files": len(files),
                   "shards": len(shards)})
        p.tracking.log_datasets(run_id, {"input": spec.input_uri}, "inference")
        link_mlflow_run(p.tracking, run_id, "batch inference")
        job = BatchJob(batch_id=batch_id, model_uri=model_uri, model_path=str(model_path), output_uri=spec.output_uri,
                       input_format=spec.input_format, batch_size=spec.batch_size,
                       inference_timeout_seconds=spec.inference_timeout_seconds,
                       max_failed_batches=spec.max_failed_batches, output_probabilities=spec.output_probabilities,
                       id_field=spec.id_field, feature_fields=spec.feature_fields, drop_fields=spec.drop_fields,
                       inputs=dict(files), local_inputs=sources, scratch=str(scratch))
        try:
            # 5. Workers.
            started = time.monotonic()
            fresh = run_workers(p.storage, p.settings.as_env(), spec, job, pending, done, shards, model, batch_id,
                                scratch)
            seconds = time.monotonic() - started
            # 6. Assemble, summarize.
            summary = finish(p.storage, p.tracking, spec, layout, shards, {**done, **fresh}, model_uri, model, run_id,
                             batch_id, seconds, len(shards) - len(pending), fresh, scratch)
            result = BatchInferenceResult(run_id=run_id, **{k: v for k, v in summary.items()
                                                            if k in BatchInferenceResult.model_fields})
        except TrainingStopped as stop:
            end_run(p.tracking, run_id, "KILLED", f"STOPPED: {stop.reason}")
            logger.warning("batch inference stopped: %s (finished shards are kept; rerun the same spec to resume)",
                           stop.reason)
            return Cancelled(message=f"STOPPED: {stop.reason}")
        except BaseException as exc:
            end_run(p.tracking, run_id, "FAILED", f"FAIL BATCH INFERENCE: {exc}")
            raise
        end_run(p.tracking, run_id, "FINISHED", None)
    finally:
        model_host.close(model)  # its sandbox's process
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("batch inference %s COMPLETE: %d rows (%d failed) in %.1f s, %.0f rows/s -> %s", spec.name,
                result.rows, result.failed_rows, result.seconds, result.rows_per_second, spec.output_uri)
    return result


