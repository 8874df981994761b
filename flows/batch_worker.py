"""Batch inference worker: one job of a batch inference as its own flow run (on a Kubernetes pool, its
own pod). The batch inference starts these through the FlowRuns transport (tasks/transport.py).

1. Fetch and load the model once (the job's pinned model_uri).
2. Run the job's shards: each output and its record are committed under output_uri, where the batch
   inference that started this run reads them.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from mlyard.core.names import FLOW_BATCH_WORKER
from mlyard.core.specs import BatchJob
from mlyard.flows.platform import Platform
from mlyard.tasks.inference import run_job
from mlyard.tasks.orchestration import cancel_watch
from mlyard.tasks.transport import Follow


@flow(name=FLOW_BATCH_WORKER, description="One worker of a batch inference (started by the batch inference).")
def batch_worker(spec: BatchJob) -> dict[str, int]:
    p = Platform()
    logger = get_run_logger()
    scratch = p.scratch("batch-worker")

    def on_event(event: dict) -> None:
        if event.get("event") == "shard":
            logger.info("shard %s done: %s rows (%s failed)", event["key"], event["rows"], event["failed_rows"])
        elif event.get("event") == "failure":
            logger.warning("batch failed: %s rows %s-%s: %s", event["file"], event["first_row"], event["last_row"],
                           event["error"])

    try:
        job = spec.model_copy(update={"scratch": str(scratch)})
        records = run_job(job, Follow(on_event=on_event, should_stop=cancel_watch(str(flow_run.get_id() or "local-"))),
                          p.storage)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return {"shards": len(records), "rows": sum(r.rows for r in records), "failed_rows": sum(r.failed_rows for r in records)}
