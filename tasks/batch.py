"""A batch inference's steps: load the model once, check the output location (a rerun of the same job
resumes it), stage inputs in, run the workers on a transport (tasks/transport.py), join and sum up.
Arguments are narrow: the spec, the storage and MLflow clients, the registry, ids and paths.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from mlyard.core.errors import BatchFailed, SpecError, StorageError
from mlyard.core.names import TAG_STATUS_REASON, TASK_FINISH, TASK_RUN_WORKERS
from mlyard.core.specs import BatchInferenceSpec, BatchJob, BatchShard, is_registry_ref
from mlyard.registry.models import ModelRegistry
from mlyard.registry.tracking import Tracking
from mlyard.tasks import model_host
from mlyard.tasks.inference import Model, Progress, RecordWatcher, fetch_model, run_job
from mlyard.tasks.metrics import Metric
from mlyard.tasks.orchestration import cancel_watch, step_started
from mlyard.tasks.outputs import Layout, ShardRecord, concat, done_records, rows_per_second
from mlyard.tasks.shards import assign
from mlyard.tasks.storage import Storage

PROGRESS_LOG_SECONDS = 5.0


@task(name="load-model", cache_policy=NO_CACHE)
def load_model(storage: Storage, models: ModelRegistry, spec: BatchInferenceSpec, scratch: Path) -> tuple[str, Path, Model]:
    """The model as a pinned URI (an alias resolved to its version), a local copy, and loaded once here
    so that a model that does not load fails the job before anything starts."""
    from mlflow.exceptions import MlflowException

    if is_registry_ref(spec.model):
        mv = models.resolve(spec.model)
        uri = f"models:/{mv.name}/{mv.version}"
    else:
        uri = spec.model
    try:
        local = fetch_model(storage, uri, scratch / "model")
        model = model_host.load(Path(local), storage.settings.sandbox)  # a model is code: in its sandbox
    except (MlflowException, OSError) as exc:
        if isinstance(exc, StorageError):
            raise SpecError("model", spec.model, str(exc)) from exc
        raise SpecError("model", spec.model, f"an MLflow model that loads ({type(exc).__name__}: {exc})"[:600]) from exc
    return uri, local, model


@task(name="check-output", cache_policy=NO_CACHE)
def check_output(storage: Storage, spec: BatchInferenceSpec, layout: Layout, model_uri: str) -> tuple[dict | None, dict]:
    """The plan and finished shards of an interrupted run of this same job, or (None, {}) for a fresh one."""
    if not storage.exists(layout.manifest, "output_uri"):
        return None, {}
    manifest = json.loads(storage.read_bytes(layout.manifest, "output_uri"))
    if manifest.get("fingerprint") != fingerprint(spec, model_uri):
        raise SpecError("output_uri", spec.output_uri,
                        "an empty location: it holds the output of another batch inference (a different model, "
                        "input or fields). Rerunning the same spec there resumes it.")
    loc = storage.resolve(spec.output_uri, "output_uri")
    if loc.kind == "local":  # temporary files of the killed run: never complete, never kept
        for stale in loc.path.rglob(".*.tmp"):
            stale.unlink(missing_ok=True) if stale.is_file() else shutil.rmtree(stale, ignore_errors=True)
    return manifest, done_records(storage, layout)


@task(name="stage-inputs", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=lambda t, r, s: isinstance(s.result(raise_on_failure=False), StorageError))
def stage_inputs(storage: Storage, files: list[tuple[str, str]], manifest: dict | None, done: dict,
                 scratch: Path) -> dict[str, str]:
    """File name -> local path. Remote files are downloaded to scratch disk, unless every shard of
    theirs is finished (planning needs a local copy; flow-run workers in other pods download their own)."""
    finished = set()
    if manifest is not None:
        by_file: dict[str, list[str]] = {}
        for s in manifest["shards"]:
            by_file.setdefault(s["file"], []).append(BatchShard.model_validate(s).key)
        finished = {f for f, keys in by_file.items() if all(k in done for k in keys)}
    out = {}
    for name, uri in files:
        loc = storage.resolve(uri, "input_uri")
        if loc.kind == "local":
            out[name] = str(loc.path)
        elif name in finished:
            out[name] = uri
        else:
            out[name] = str(storage.stage_in(uri, scratch / "input" / name.replace("/", "__"), "input_uri"))
    return out


@task(name=TASK_RUN_WORKERS, cache_policy=NO_CACHE)
def run_workers(storage: Storage, worker_env: dict[str, str], spec: BatchInferenceSpec, job: BatchJob, pending: list[BatchShard],
                done: dict[str, ShardRecord], shards: list[BatchShard], model: Model, batch_id: str,
                scratch: Path) -> dict[str, ShardRecord]:
    """Run the pending shards on the transport the spec asks for; returns their records."""
    step_started(TASK_RUN_WORKERS)
    from mlyard.tasks.transport import FlowRuns, Follow, InProcess, LocalProcesses, Transport

    logger = get_run_logger()
    if not pending:
        return {}
    total = sum(s.size for s in shards)
    progress = Progress(total, done_rows=sum(r.rows for r in done.values()),
                        done_bytes=sum(s.size for s in shards if s.key in done))
    started = time.monotonic()
    parent = flow_run.get_parent_flow_run_id() if batch_id and not batch_id.startswith("local-") else None
    last_log = [started]

    # A progress bar on the flow run's page in the Prefect UI, and a line in its log.
    bar = create_progress_artifact(progress.percent, description=f"batch inference {spec.name}")

    def on_event(event: dict) -> None:
        progress.update(event)
        if event.get("event") == "failure":
            logger.warning("batch failed: %s rows %s-%s: %s", event["file"], event["first_row"], event["last_row"],
                           event["error"])
        now = time.monotonic()
        if now - last_log[0] >= PROGRESS_LOG_SECONDS or event.get("event") == "shard":
            last_log[0] = now
            line = progress.line()
            logger.info("progress %s", line)
            try:
                update_progress_artifact(bar, progress.percent, description=line)
            except Exception:  # the bar is a nicety; the API being slow must not fail the job
                pass

    def failed() -> str | None:
        if spec.max_run_time_seconds and time.monotonic() - started > spec.max_run_time_seconds:
            return f"max run time of {spec.max_run_time_seconds} s passed; the batch inference was ended"
        if len(progress.failures) > spec.max_failed_batches:
            f = progress.failures[-1]
            return (f"{len(progress.failures)} batches failed (max_failed_batches is {spec.max_failed_batches}); "
                    f"last: {f['file']} rows {f['first_row']}-{f['last_row']}: {f['error']}")
        return None

    groups = assign(pending, spec.workers)
    jobs = [job.with_shards(g) for g in groups]
    follow = Follow(on_event=on_event, should_stop=cancel_watch(batch_id, parent_id=str(parent) if parent else None),
                    failed=failed, log=logger.info, failure=BatchFailed)
    transport: Transport
    if spec.worker_deployment:
        transport = FlowRuns(spec.worker_deployment, spec.worker_job_variables(job.batch_id))
        follow.poll = RecordWatcher(storage, spec.output_uri, {s.key for s in pending}, on_event)
    elif len(jobs) == 1:
        transport = InProcess(lambda j, f: run_job(j, f, storage, model=model))
    else:
        transport = LocalProcesses("mlyard.tasks.inference", worker_env, scratch)
    logger.info("%d shard(s) on %d worker(s)%s", len(pending), len(jobs),
                f" as flow runs of {spec.worker_deployment}" if spec.worker_deployment else "")
    transport.run(jobs, follow)
    records = done_records(storage, Layout(spec.output_uri))
    return {s.key: records[s.key] for s in pending if s.key in records}


@task(name=TASK_FINISH, cache_policy=NO_CACHE)
def finish(storage: Storage, tracking: Tracking, spec: BatchInferenceSpec, layout: Layout, shards: list[BatchShard], records: dict[str, ShardRecord],
           model_uri: str, model: Model, run_id: str, batch_id: str, seconds: float, resumed: int,
           fresh: dict[str, ShardRecord], scratch: Path) -> dict[str, Any]:
    """Every shard has its record; join shards of one file; write the summary and the failures."""
    step_started(TASK_FINISH)
    missing = [s.key for s in shards if s.key not in records]
    if missing:
        raise BatchFailed(f"{len(missing)} shard(s) have no result ({missing[0]} ...); rerun the same spec to finish them")
    by_file: dict[str, list[BatchShard]] = {}
    for s in shards:
        by_file.setdefault(s.file, []).append(s)
    for file, parts in by_file.items():
        if len(parts) > 1 and not (storage.exists(layout.output(file), "output_uri")
                                   and not storage.exists(layout.part(parts[0]), "output_uri")):
            # Local parts are read in place; remote ones are downloaded one by one to scratch.
            local = [storage.stage_in(layout.part(s), scratch / "parts" / f"{s.index}", "output_uri")
                     for s in sorted(parts, key=lambda s: s.index)]
            joined = scratch / "joined.jsonl"
            concat(local, joined)
            storage.upload(joined, layout.output(file), "output_uri")
            joined.unlink()
            for s in parts:
                storage.delete(layout.part(s), "output_uri")
    rows = sum(r.rows for r in records.values())
    failures = [f for r in records.values() for f in r.failures]
    rows_by_file: dict[str, int] = {}
    for r in records.values():
        rows_by_file[r.file] = rows_by_file.get(r.file, 0) + r.rows
    empty = sorted(f for f in by_file if rows_by_file.get(f, 0) == 0)
    if empty:
        get_run_logger().warning("%d input file(s) hold no rows: %s", len(empty), ", ".join(empty[:10]))
    fresh_rows = sum(r.rows for r in fresh.values())
    summary = {
        "batch_id": batch_id, "name": spec.name, "model": spec.model, "model_uri": model_uri,
        "input_uri": spec.input_uri, "output_uri": spec.output_uri, "files": len(by_file), "rows": rows,
        "failed_rows": sum(r.failed_rows for r in records.values()), "failed_batches": len(failures),
        "rows_per_second": rows_per_second(fresh_rows, seconds), "seconds": round(seconds, 3),
        "resumed_shards": resumed, "classes": model.classes if spec.output_probabilities and model.has_proba else None,
        "outputs": {f: layout.output(f) for f in by_file}, "empty_files": empty,
    }
    (scratch / "_summary.json").write_text(json.dumps(summary, indent=2))
    (scratch / "_failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    storage.upload(scratch / "_failures.jsonl", layout.failures, "output_uri")
    storage.upload(scratch / "_summary.json", layout.summary, "output_uri")
    now_ms = int(time.time() * 1000)
    tracking.log_metrics(run_id, [Metric(k, float(summary[k]), 0, now_ms) for k in
                                    ("files", "rows", "failed_rows", "failed_batches", "rows_per_second", "seconds",
                                     "resumed_shards")])
    tracking.log_artifact(run_id, scratch / "_summary.json", "batch")
    tracking.log_artifact(run_id, scratch / "_failures.jsonl", "batch")
    if rows == 0:
        raise BatchFailed(f"the input holds no rows: every file is empty ({', '.join(empty[:5])})")
    if summary["failed_rows"] == rows:
        first = failures[0]["error"] if failures else "see _failures.jsonl"
        raise BatchFailed(f"every one of the {rows} rows failed; the first error: {first}")
    return summary


def fingerprint(spec: BatchInferenceSpec, model_uri: str) -> dict[str, Any]:
    keys = ("input_uri", "input_format", "include", "exclude", "id_field", "feature_fields", "drop_fields",
            "output_probabilities")
    return {"model_uri": model_uri, **spec.model_dump(mode="json", include=set(keys))}


def end_run(tracking: Tracking, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"], reason: str | None) -> None:
    if reason:
        tracking.set_tags(run_id, {TAG_STATUS_REASON: reason[:5000]})
    tracking.end_run(run_id, status)

