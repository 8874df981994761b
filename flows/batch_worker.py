"""Batch inference worker: one worker of a batch inference as its own flow run (on Kubernetes, its own pod).

1. Fetch and load the model once.
2. Run its shards: each output and its record are committed under output_uri, where the batch
   inference that started this run reads them.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.platform import Platform, cancel_flow_run, cancel_watch, submit
from mlyard.errors import BatchFailed, TrainingStopped
from mlyard.names import FLOW_BATCH_WORKER
from mlyard.specs import BatchInferenceSpec
from tasks.inference import Job, Layout, Model, Shard, Worker, done_records, fetch_model

POLL_SECONDS = 2.0


class ShardSpec(BaseModel):
    file: str = Field(description="Input file, relative to the batch inference's input_uri.")
    index: int = Field(ge=0, description="Which shard of the file (0-based).")
    count: int = Field(ge=1, description="Shards of the file.")
    start: int = Field(default=0, ge=0, description="Byte offset of the first line.")
    end: int | None = Field(default=None, description="Byte offset past the last line (None: the end).")
    first_row: int = Field(default=0, ge=0, description="Row number of the first line.")
    size: int = Field(default=0, ge=0, description="Bytes.")


class WorkerSpec(BaseModel):
    """One worker's share of a batch inference (filled in by the batch inference, not by hand)."""

    batch_id: str = Field(description="The batch inference this worker belongs to.")
    model_uri: str = Field(description="The pinned model: models:/name/version or a model URI.")
    output_uri: str = Field(description="The batch inference's output_uri.")
    input_format: str = Field(description="json, jsonl or csv.")
    batch_size: int = Field(ge=1, description="Rows per model call.")
    inference_timeout_seconds: float = Field(gt=0, description="Longest one model call may take.")
    max_failed_batches: int = Field(ge=0, description="Give up once more batches than this failed.")
    output_probabilities: bool = Field(description="Also write class probabilities.")
    id_field: str | None = Field(default=None, description="Input field copied to each prediction.")
    feature_fields: list[str] | None = Field(default=None, description="Input fields fed to the model.")
    drop_fields: list[str] = Field(default_factory=list, description="Input fields never fed to the model.")
    shards: list[ShardSpec] = Field(description="The shards this worker runs.")
    sources: dict[str, str] = Field(description="Input file -> its URI.")


@flow(name=FLOW_BATCH_WORKER, description="One worker of a batch inference (started by the batch inference).")
def batch_worker(spec: WorkerSpec) -> dict[str, int]:
    p = Platform()
    logger = get_run_logger()
    scratch = p.scratch("batch-worker")
    local = fetch_model(p.storage, spec.model_uri, scratch / "model")
    job = Job(**{**spec.model_dump(exclude={"batch_id", "shards"}), "model_uri": str(local), "origins": spec.sources,
                 "shards": [s.model_dump() for s in spec.shards], "scratch": str(scratch)})

    def emit(event: dict) -> None:
        if event.get("event") == "shard":
            logger.info("shard %s done: %s rows (%s failed)", event["key"], event["rows"], event["failed_rows"])
        elif event.get("event") == "failure":
            logger.warning("batch failed: %s rows %s-%s: %s", event["file"], event["first_row"], event["last_row"],
                           event["error"])

    worker = Worker(job, p.storage, emit=emit, should_stop=cancel_watch(str(flow_run.get_id() or "local-")),
                    model=Model(str(local)))
    records = worker.run()
    return {"shards": len(records), "rows": sum(r.rows for r in records), "failed_rows": sum(r.failed_rows for r in records)}


def run_worker_flow_runs(spec: BatchInferenceSpec, job: Job, model_uri: str, groups: list[list[Shard]], batch_id: str,
                         storage, on_event: Callable[[dict], None], should_stop: Callable[[], str | None],
                         failed: Callable[[], str | None]) -> None:
    """Start one flow run of spec.worker_deployment per group and follow them through their shard
    records until all are done. Stopping or failing ends every one of them."""
    from prefect.client.orchestration import get_client

    layout = Layout(spec.output_uri)
    base: dict[str, Any] = {k: getattr(job, k) for k in WorkerSpec.model_fields if hasattr(job, k)}
    base.update(batch_id=batch_id, model_uri=model_uri, sources=job.origins)
    runs = [submit(spec.worker_deployment, {"spec": {**base, "shards": [s.as_dict() for s in g]}}, spec.job_variables())
            for g in groups]
    wanted = {s.key for g in groups for s in g}
    seen: set[str] = set()
    try:
        while True:
            for key, rec in done_records(storage, layout).items():
                if key in wanted and key not in seen:
                    seen.add(key)
                    for f in rec.failures:
                        on_event({"event": "failure", "key": key, **f})
                    on_event({"event": "shard", "key": key, "rows": rec.rows, "failed_rows": rec.failed_rows,
                              "bytes": 0})
            with get_client(sync_client=True) as client:
                states = [client.read_flow_run(r.id).state for r in runs]
            bad = [s for s in states if s is not None and s.is_final() and not s.is_completed()]
            if bad:
                raise BatchFailed(f"a worker flow run ended {bad[0].type.value}: {bad[0].message}")
            if all(s is not None and s.is_completed() for s in states):
                return
            reason = should_stop()
            if reason:
                raise TrainingStopped(reason)
            error = failed()
            if error:
                raise BatchFailed(error)
            time.sleep(POLL_SECONDS)
    except BaseException:
        for r in runs:
            try:
                cancel_flow_run(str(r.id), "the batch inference ended")
            except Exception:  # already final
                pass
        raise

