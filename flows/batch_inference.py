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
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from flows.platform import Platform
from mlyard.errors import BatchFailed, SpecError, StorageError, TrainingStopped
from mlyard.names import (
    FLOW_BATCH,
    TAG_BATCH_ID,
    TAG_KIND,
    TAG_MODEL,
    TAG_MODEL_URI,
    TAG_NOTE,
    TAG_STATUS_REASON,
    TASK_FINISH,
    TASK_RUN_WORKERS,
)
from mlyard.specs import BatchInferenceSpec, BatchJob, BatchShard, is_registry_ref
from tasks import checks
from tasks.inference import Model, Progress, RecordWatcher, fetch_model, run_job
from tasks.metrics import Metric
from tasks.orchestration import cancel_watch, prefect_link, stopped_on_interrupt
from tasks.outputs import Layout, ShardRecord, concat, done_records, rows_per_second
from tasks.shards import assign, plan, select_files

PROGRESS_LOG_SECONDS = 5.0


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


@flow(name=FLOW_BATCH, flow_run_name="{spec.name}", on_crashed=[stopped_on_interrupt],
      description="Run a model over input files (JSON, JSONL, CSV) and write predictions.")
def batch_infer(spec: BatchInferenceSpec) -> BatchInferenceResult:
    p = Platform()
    logger = get_run_logger()
    batch_id = str(flow_run.get_id() or f"local-{time.time_ns()}")
    layout = Layout(spec.output_uri)
    scratch = p.scratch(spec.name)
    try:
        # 1-2. Check and stage in.
        model_uri, model_path, model = load_model(p, spec, scratch)
        checks.output_outside_input(spec.input_uri, spec.output_uri)
        files = select_files(p.storage, spec.input_uri, spec.include, spec.exclude)
        manifest, done = check_output(p, spec, layout, model_uri)
        sources = stage_inputs(p, spec, files, manifest, done, scratch)

        # 3. Plan (an interrupted run's plan is kept, so its finished shards still fit).
        if manifest is None:
            shards = plan([(name, Path(sources[name])) for name, _ in files], spec.input_format, spec.workers)
            manifest = {"fingerprint": _fingerprint(spec, model_uri), "shards": [s.model_dump() for s in shards]}
            p.storage.write_bytes(layout.manifest, json.dumps(manifest, indent=1).encode(), "output_uri")
        shards = [BatchShard.model_validate(s) for s in manifest["shards"]]
        pending = [s for s in shards if s.key not in done]
        if done:
            logger.info("resuming: %d of %d shards were finished by an earlier run", len(shards) - len(pending), len(shards))

        # 4. MLflow run.
        run_id = p.tracking.start_run(spec.experiment, spec.name, tags={
            TAG_KIND: "batch_inference", TAG_BATCH_ID: batch_id, TAG_MODEL: spec.model,
            TAG_MODEL_URI: model_uri, TAG_NOTE: spec.description, **prefect_link(),
        }, params={"model": model_uri, "input_uri": spec.input_uri, "input_format": spec.input_format,
                   "output_uri": spec.output_uri, "batch_size": spec.batch_size, "workers": spec.workers,
                   "inference_timeout_seconds": spec.inference_timeout_seconds, "files": len(files),
                   "shards": len(shards)})
        job = BatchJob(batch_id=batch_id, model_uri=model_uri, model_path=str(model_path), output_uri=spec.output_uri,
                       input_format=spec.input_format, batch_size=spec.batch_size,
                       inference_timeout_seconds=spec.inference_timeout_seconds,
                       max_failed_batches=spec.max_failed_batches, output_probabilities=spec.output_probabilities,
                       id_field=spec.id_field, feature_fields=spec.feature_fields, drop_fields=spec.drop_fields,
                       inputs=dict(files), local_inputs=sources, scratch=str(scratch))
        try:
            # 5. Workers.
            started = time.monotonic()
            fresh = run_workers(p, spec, job, pending, done, shards, model, batch_id, scratch)
            seconds = time.monotonic() - started
            # 6. Assemble, summarize.
            result = finish(p, spec, layout, shards, {**done, **fresh}, model_uri, model, run_id, batch_id,
                            seconds, len(shards) - len(pending), fresh, scratch)
        except TrainingStopped as stop:
            _end(p, run_id, "KILLED", f"STOPPED: {stop.reason}")
            logger.warning("batch inference stopped: %s (finished shards are kept; rerun the same spec to resume)",
                           stop.reason)
            return Cancelled(message=f"STOPPED: {stop.reason}")
        except BaseException as exc:
            _end(p, run_id, "FAILED", f"FAIL BATCH INFERENCE: {exc}")
            raise
        _end(p, run_id, "FINISHED", None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("batch inference %s COMPLETE: %d rows (%d failed) in %.1f s, %.0f rows/s -> %s", spec.name,
                result.rows, result.failed_rows, result.seconds, result.rows_per_second, spec.output_uri)
    return result


@task(name="load-model", cache_policy=NO_CACHE)
def load_model(p: Platform, spec: BatchInferenceSpec, scratch: Path) -> tuple[str, Path, Model]:
    """The model as a pinned URI (an alias resolved to its version), a local copy, and loaded once here
    so that a model that does not load fails the job before anything starts."""
    from mlflow.exceptions import MlflowException

    if is_registry_ref(spec.model):
        mv = p.models.resolve(spec.model)
        uri = f"models:/{mv.name}/{mv.version}"
    else:
        uri = spec.model
    try:
        local = fetch_model(p.storage, uri, scratch / "model")
        model = Model(str(local))
    except (MlflowException, OSError) as exc:
        if isinstance(exc, StorageError):
            raise SpecError("model", spec.model, str(exc)) from exc
        raise SpecError("model", spec.model, f"an MLflow model that loads ({type(exc).__name__}: {exc})"[:600]) from exc
    return uri, local, model


@task(name="check-output", cache_policy=NO_CACHE)
def check_output(p: Platform, spec: BatchInferenceSpec, layout: Layout, model_uri: str) -> tuple[dict | None, dict]:
    """The plan and finished shards of an interrupted run of this same job, or (None, {}) for a fresh one."""
    if not p.storage.exists(layout.manifest, "output_uri"):
        return None, {}
    manifest = json.loads(p.storage.read_bytes(layout.manifest, "output_uri"))
    if manifest.get("fingerprint") != _fingerprint(spec, model_uri):
        raise SpecError("output_uri", spec.output_uri,
                        "an empty location: it holds the output of another batch inference (a different model, "
                        "input or fields). Rerunning the same spec there resumes it.")
    loc = p.storage.resolve(spec.output_uri, "output_uri")
    if loc.kind == "local":  # temporary files of the killed run: never complete, never kept
        for stale in loc.path.rglob(".*.tmp"):
            stale.unlink(missing_ok=True) if stale.is_file() else shutil.rmtree(stale, ignore_errors=True)
    return manifest, done_records(p.storage, layout)


@task(name="stage-inputs", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=lambda t, r, s: isinstance(s.result(raise_on_failure=False), StorageError))
def stage_inputs(p: Platform, spec: BatchInferenceSpec, files: list[tuple[str, str]], manifest: dict | None,
                 done: dict, scratch: Path) -> dict[str, str]:
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
        loc = p.storage.resolve(uri, "input_uri")
        if loc.kind == "local":
            out[name] = str(loc.path)
        elif name in finished:
            out[name] = uri
        else:
            out[name] = str(p.storage.stage_in(uri, scratch / "input" / name.replace("/", "__"), "input_uri"))
    return out


@task(name=TASK_RUN_WORKERS, cache_policy=NO_CACHE)
def run_workers(p: Platform, spec: BatchInferenceSpec, job: BatchJob, pending: list[BatchShard],
                done: dict[str, ShardRecord], shards: list[BatchShard], model: Model, batch_id: str,
                scratch: Path) -> dict[str, ShardRecord]:
    """Run the pending shards on the transport the spec asks for; returns their records."""
    from tasks.transport import FlowRuns, Follow, InProcess, LocalProcesses, Transport

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
        transport = FlowRuns(spec.worker_deployment, spec.job_variables())
        follow.poll = RecordWatcher(p.storage, spec.output_uri, {s.key for s in pending}, on_event)
    elif len(jobs) == 1:
        transport = InProcess(lambda j, f: run_job(j, f, p.storage, model=model))
    else:
        transport = LocalProcesses("tasks.inference", _settings_env(p), scratch)
    logger.info("%d shard(s) on %d worker(s)%s", len(pending), len(jobs),
                f" as flow runs of {spec.worker_deployment}" if spec.worker_deployment else "")
    transport.run(jobs, follow)
    records = done_records(p.storage, Layout(spec.output_uri))
    return {s.key: records[s.key] for s in pending if s.key in records}


@task(name=TASK_FINISH, cache_policy=NO_CACHE)
def finish(p: Platform, spec: BatchInferenceSpec, layout: Layout, shards: list[BatchShard], records: dict[str, ShardRecord],
           model_uri: str, model: Model, run_id: str, batch_id: str, seconds: float, resumed: int,
           fresh: dict[str, ShardRecord], scratch: Path) -> BatchInferenceResult:
    """Every shard has its record; join shards of one file; write the summary and the failures."""
    missing = [s.key for s in shards if s.key not in records]
    if missing:
        raise BatchFailed(f"{len(missing)} shard(s) have no result ({missing[0]} ...); rerun the same spec to finish them")
    by_file: dict[str, list[BatchShard]] = {}
    for s in shards:
        by_file.setdefault(s.file, []).append(s)
    for file, parts in by_file.items():
        if len(parts) > 1 and not (p.storage.exists(layout.output(file), "output_uri")
                                   and not p.storage.exists(layout.part(parts[0]), "output_uri")):
            # Local parts are read in place; remote ones are downloaded one by one to scratch.
            local = [p.storage.stage_in(layout.part(s), scratch / "parts" / f"{s.index}", "output_uri")
                     for s in sorted(parts, key=lambda s: s.index)]
            joined = scratch / "joined.jsonl"
            concat(local, joined)
            p.storage.upload(joined, layout.output(file), "output_uri")
            joined.unlink()
            for s in parts:
                p.storage.delete(layout.part(s), "output_uri")
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
    p.storage.upload(scratch / "_failures.jsonl", layout.failures, "output_uri")
    p.storage.upload(scratch / "_summary.json", layout.summary, "output_uri")
    now_ms = int(time.time() * 1000)
    p.tracking.log_metrics(run_id, [Metric(k, float(summary[k]), 0, now_ms) for k in
                                    ("files", "rows", "failed_rows", "failed_batches", "rows_per_second", "seconds",
                                     "resumed_shards")])
    p.tracking.log_artifact(run_id, scratch / "_summary.json", "batch")
    p.tracking.log_artifact(run_id, scratch / "_failures.jsonl", "batch")
    if rows == 0:
        raise BatchFailed(f"the input holds no rows: every file is empty ({', '.join(empty[:5])})")
    if summary["failed_rows"] == rows:
        first = failures[0]["error"] if failures else "see _failures.jsonl"
        raise BatchFailed(f"every one of the {rows} rows failed; the first error: {first}")
    return BatchInferenceResult(run_id=run_id, **{k: v for k, v in summary.items()
                                                  if k in BatchInferenceResult.model_fields})


def _fingerprint(spec: BatchInferenceSpec, model_uri: str) -> dict[str, Any]:
    keys = ("input_uri", "input_format", "include", "exclude", "id_field", "feature_fields", "drop_fields",
            "output_probabilities")
    return {"model_uri": model_uri, **spec.model_dump(mode="json", include=set(keys))}


def _settings_env(p: Platform) -> dict[str, str]:
    """This run's settings as the MLYARD_* environment of a worker process."""
    data = p.settings.model_dump(mode="json", exclude_none=True)
    if p.settings.s3_secret_access_key is not None:
        data["s3_secret_access_key"] = p.settings.s3_secret_access_key.get_secret_value()
    return {f"MLYARD_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def _end(p: Platform, run_id: str, status: str, reason: str | None) -> None:
    if reason:
        p.tracking.set_tags(run_id, {TAG_STATUS_REASON: reason[:5000]})
    p.tracking.end_run(run_id, status)

