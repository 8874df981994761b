"""Batch inference's worker: stream records through a model in batches and write predictions aligned
to the rows.

- `Worker`: the loop. Batches of `batch_size` rows; each model call has a timeout; a batch that times
  out or raises is written as error rows and recorded (file, rows, error); the output of a shard is
  committed atomically and then its record, so a rerun skips every shard that has a record.
- `run_job(job, follow, storage)`: one `BatchJob` on any transport (tasks/transport.py): in process,
  and here as a local worker process, `python -m mlyard.tasks.inference JOB.json`, which reports on stdout.
- `RecordWatcher`: turns the shard records workers commit into events, for transports that stream none.
- `Progress`: adds the workers' events up into one line for the log and the UI's progress bar.

Planning is in tasks/shards.py, reading records in tasks/records.py, where results go in tasks/outputs.py.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import orjson

from mlyard.core.errors import BadRecord, BatchFailed, ModelCallFailed, TrainingStopped
from mlyard.core.specs import BatchJob, BatchShard, is_mlflow_uri
from mlyard.tasks import model_host
from mlyard.tasks.models import Model
from mlyard.tasks.outputs import Layout, ShardRecord, done_records
from mlyard.tasks.records import features, read_chunks
from mlyard.tasks.storage import Storage
from mlyard.tasks.transport import Follow, emit_to_stdout

PROGRESS_SECONDS = 2.0


# -- the model -------------------------------------------------------------------------------------

def fetch_model(storage: Storage, uri: str, dest: Path) -> Path:
    """A local copy of the model at `uri`: models:/ and runs:/ through MLflow, locations through storage."""
    if is_mlflow_uri(uri):
        import mlflow.artifacts

        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    return storage.stage_in(uri, dest, "model")


class _Caller:
    """Runs calls on one daemon thread so that a caller can give up after a timeout (the call itself
    cannot be interrupted; it finishes in the background and its thread then ends)."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="mlyard-predict", daemon=True).start()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, fut = item
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        fut: Future = Future()
        self._q.put((fn, fut))
        return fut.result(timeout)

    def close(self) -> None:
        self._q.put(None)


# -- the worker loop -------------------------------------------------------------------------------

class Worker:
    """Runs shards of a job: `emit` receives progress, failure and shard events (dicts)."""

    with_proba = False

    def __init__(self, job: BatchJob, storage: Storage, emit: Callable[[dict], None] = lambda e: None,
                 should_stop: Callable[[], str | None] = lambda: None, model: Model | None = None,
                 failed: Callable[[], str | None] = lambda: None):
        self.job, self.storage, self.emit, self.should_stop, self.failed = job, storage, emit, should_stop, failed
        self.layout = Layout(job.output_uri)
        self.model = model
        self.skip = {f for f in (job.id_field, *job.drop_fields) if f}
        self._caller = _Caller()
        self.failed_batches = 0
        self._own: Any = None  # the model this worker loaded itself

    def run(self) -> list[ShardRecord]:
        own = self.job.scratch if self.job.scratch and Path(self.job.scratch).is_dir() else None
        scratch = Path(tempfile.mkdtemp(prefix="mlyard-batch-", dir=own))
        frozen_before = gc.get_freeze_count() > 0
        try:
            if self.model is None:  # a model is code: loaded and called in its sandbox (tasks/model_host.py)
                from mlyard.core.settings import Settings

                self.model = self._own = model_host.load(self._model_path(scratch), Settings().sandbox)
            self.with_proba = self.job.output_probabilities and self.model.has_proba
            # what is loaded now (Prefect, MLflow, the model) lives as long as the job: keep it out of the
            # collector's full passes, which a million parsed rows would otherwise trigger again and again.
            # Only the young generations are collected first: a full pass here scanned everything the
            # process had loaded (0.5 s of CPU per job in a process holding a test suite's imports); older
            # garbage frozen with the rest is collected after the job, at the unfreeze (a process that keeps
            # its own freeze, below, ends with its flow run or keeps it: a little memory).
            gc.collect(1)
            gc.freeze()
            return [self.run_shard(shard, scratch) for shard in self.job.shards]
        finally:
            # a worker in a longer-lived process gives them back, unless that process froze what it had
            # loaded itself (a warm runner's child inherits the runner's frozen imports: unfrozen, the
            # collector's next full pass would touch, and so copy, every page it shares with the runner)
            if not frozen_before:
                gc.unfreeze()
            self._caller.close()
            model_host.close(self._own)  # the sandbox of a model loaded for this job alone
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)

    def _model_path(self, scratch: Path) -> Path:
        """The batch inference's local copy where it exists (same machine), else a fresh one."""
        local = self.job.model_path
        if local and Path(local).exists():
            return Path(local)
        return fetch_model(self.storage, self.job.model_uri, scratch / "model")

    def _local(self, file: str, scratch: Path) -> Path:
        local = self.job.local_inputs.get(file)
        if local and Path(local).is_file():
            return Path(local)
        return self.storage.stage_in(self.job.inputs[file], scratch / "input" / file.replace("/", "__"), "input_uri")

    def run_shard(self, shard: BatchShard, scratch: Path) -> ShardRecord:
        started = time.monotonic()
        rec = ShardRecord(shard.key, shard.file)
        path = self._local(shard.file, scratch)
        tmp = scratch / f"out-{shard.index}-{os.getpid()}.jsonl"
        last = started
        batch: list[tuple[int, Any]] = []
        done_bytes = 0
        size = self.job.batch_size
        with open(tmp, "wb", buffering=1 << 20) as out:
            for chunk, done_bytes in read_chunks(path, self.job.input_format, shard.start, shard.end, shard.first_row,
                                                 size):
                for row, record in chunk:
                    if isinstance(record, BadRecord):
                        self._fail(rec, out, shard, [(row, None)], record.reason)
                    else:
                        batch.append((row, record))
                while len(batch) >= size:
                    self._batch(rec, out, shard, batch[:size])
                    batch = batch[size:]
                    now = time.monotonic()
                    if now - last >= PROGRESS_SECONDS:
                        last = now
                        self.emit({"event": "progress", "key": shard.key, "rows": rec.rows, "failed_rows": rec.failed_rows,
                                   "bytes": done_bytes, "size": shard.size})
                        self.check()
            if batch:
                self._batch(rec, out, shard, batch)
        # Commit: the output first (atomically), then its record: a record always vouches for a whole output.
        self.storage.upload(tmp, self.layout.target(shard), "output_uri")
        tmp.unlink(missing_ok=True)
        rec.seconds = round(time.monotonic() - started, 3)
        self.storage.write_bytes(self.layout.record(shard), json.dumps(asdict(rec)).encode(), "output_uri")
        self.emit({"event": "shard", "key": shard.key, "rows": rec.rows, "failed_rows": rec.failed_rows,
                   "bytes": shard.size, "size": shard.size, "seconds": rec.seconds})
        return rec

    def check(self) -> None:
        reason = self.should_stop()
        if reason:
            raise TrainingStopped(reason)
        error = self.failed()
        if error:
            raise BatchFailed(error)

    def _batch(self, rec: ShardRecord, out, shard: BatchShard, batch: list[tuple[int, Any]]) -> None:
        job, model = self.job, self.model
        assert model is not None  # loaded by run()
        try:
            x = features([r for _, r in batch], job.feature_fields, self.skip)
            preds, proba = self._caller.call(lambda: model.predict(x, self.with_proba), job.inference_timeout_seconds)
            if len(preds) != len(batch):
                raise ValueError(f"the model returned {len(preds)} predictions for {len(batch)} rows")
        except FutureTimeout:
            self._caller = _Caller()  # the stuck call keeps its own thread
            model_host.unstick(model)  # and a hosted model's process is started again
            self._fail(rec, out, shard, batch, f"timed out after {job.inference_timeout_seconds:g} s")
            return
        except ModelCallFailed as exc:  # the model's own error, as its sandbox said it (its type named)
            self._fail(rec, out, shard, batch, str(exc)[:500])
            return
        except Exception as exc:
            self._fail(rec, out, shard, batch, f"{type(exc).__name__}: {exc}"[:500])
            return
        idf = job.id_field
        out.write(encode_lines([row for row, _ in batch], [r.get(idf) for _, r in batch] if idf is not None else None,
                               preds, proba))
        rec.rows += len(batch)

    def _fail(self, rec: ShardRecord, out, shard: BatchShard, batch: list[tuple[int, Any]], error: str) -> None:
        idf = self.job.id_field
        for row, r in batch:
            line: dict[str, Any] = {"row": row}
            if idf is not None:
                line["id"] = r.get(idf) if isinstance(r, dict) else None
            line["error"] = error
            out.write(_json_line(line))
        failure = {"file": shard.file, "first_row": batch[0][0], "last_row": batch[-1][0], "rows": len(batch), "error": error}
        rec.rows += len(batch)
        rec.failed_rows += len(batch)
        rec.failed_batches += 1
        rec.failures.append(failure)
        self.failed_batches += 1
        self.emit({"event": "failure", "key": shard.key, **failure})
        if self.failed_batches > self.job.max_failed_batches:
            raise BatchFailed(f"{self.failed_batches} batches failed (max_failed_batches is "
                                f"{self.job.max_failed_batches}); last: {shard.file} rows "
                                f"{failure['first_row']}-{failure['last_row']}: {error}")


def encode_lines(rows: list[int], ids: list[Any] | None, preds: list[Any], proba: Any) -> bytes:
    """A batch's output lines, `{"row":..,"id":..,"prediction":..,"probabilities":[..]}` each (as
    `_json_line` writes them), made a column at a time: numbers and the probability matrix are
    serialized once for the whole batch and cut into rows; anything else goes value by value."""
    import numpy as np

    try:
        pred = _column(preds)
        ident = _column(ids) if ids is not None else None
        probs = None
        if proba is not None:
            text = orjson.dumps(np.asarray(proba, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY)
            probs = [b"[" + r + b"]" for r in text[2:-2].split(b"],[")] if len(rows) else []
    except TypeError:  # what orjson refuses (integers beyond 64 bits): the row-by-row way
        return _slow_lines(rows, ids, preds, proba)
    head = [b'{"row":%d' % row for row in rows]
    if ident is not None:
        head = [h + b',"id":' + i for h, i in zip(head, ident)]
    head = [h + b',"prediction":' + p for h, p in zip(head, pred)]
    if probs is not None:
        head = [h + b',"probabilities":' + q for h, q in zip(head, probs)]
    return b"}\n".join(head) + b"}\n" if head else b""


def _column(values: list[Any]) -> list[bytes]:
    """Each value as JSON: a list of plain numbers in one call, cut at its commas; else one by one."""
    if values and all(type(v) in (int, float) for v in values):
        return orjson.dumps(values)[1:-1].split(b",")
    return [orjson.dumps(v) for v in values]


def _slow_lines(rows: list[int], ids: list[Any] | None, preds: list[Any], proba: Any) -> bytes:
    lines = []
    for i, (row, p) in enumerate(zip(rows, preds)):
        line: dict[str, Any] = {"row": row}
        if ids is not None:
            line["id"] = ids[i]
        line["prediction"] = p
        if proba is not None:
            line["probabilities"] = [float(v) for v in proba[i]]
        lines.append(_json_line(line))
    return b"".join(lines)


def _json_line(obj: dict[str, Any]) -> bytes:
    """One output row as a JSON line (orjson; the standard library for what orjson refuses, such as
    integers beyond 64 bits)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return json.dumps(obj).encode() + b"\n"


class Progress:
    """Adds up the workers' events; `line()` says how far the job is, for the log."""

    def __init__(self, total_bytes: int, done_rows: int = 0, done_bytes: int = 0):
        self.total_bytes, self.base_rows, self.base_bytes = total_bytes, done_rows, done_bytes
        self.shards: dict[str, dict[str, int]] = {}
        self.failures: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def update(self, event: dict[str, Any]) -> None:
        with self._lock:
            if event.get("event") in ("progress", "shard"):
                self.shards[event["key"]] = {k: int(event[k]) for k in ("rows", "failed_rows", "bytes")}
            elif event.get("event") == "failure":
                self.failures.append({k: v for k, v in event.items() if k not in ("event", "key")})

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards.values())

    @property
    def percent(self) -> float:
        with self._lock:
            done = self.base_bytes + sum(s["bytes"] for s in self.shards.values())
        return min(100.0, 100.0 * done / self.total_bytes) if self.total_bytes else 100.0

    def line(self) -> str:
        with self._lock:
            rows = self.rows
            failed = sum(s["failed_rows"] for s in self.shards.values())
        secs = time.monotonic() - self.started
        pct = self.percent
        rate = rows / secs if secs > 0 else 0.0
        eta = ""
        if 0 < pct < 100 and secs > 0:
            eta = f", about {secs * (100 - pct) / pct:.0f} s left"
        return f"{pct:5.1f}% · {self.base_rows + rows:,} rows ({failed:,} failed) · {rate:,.0f} rows/s{eta}"


def run_job(job: BatchJob, follow: Follow, storage: Storage, model: Model | None = None) -> list[ShardRecord]:
    """Run one job here (the InProcess transport's work; `model` is one already loaded)."""
    return Worker(job, storage, follow.on_event, follow.should_stop, model=model, failed=follow.failed).run()


class RecordWatcher:
    """A `Follow.poll` for workers that stream no events (flow runs, pods): each shard record they
    commit under output_uri becomes the failure and shard events a streaming worker would have sent."""

    def __init__(self, storage: Storage, output_uri: str, keys: set[str], on_event: Callable[[dict], None]):
        self.storage, self.layout, self.keys, self.on_event = storage, Layout(output_uri), keys, on_event
        self.seen: set[str] = set()

    def __call__(self) -> None:
        for key, rec in done_records(self.storage, self.layout).items():
            if key in self.keys and key not in self.seen:
                self.seen.add(key)
                for f in rec.failures:
                    self.on_event({"event": "failure", "key": key, **f})
                self.on_event({"event": "shard", "key": key, "rows": rec.rows, "failed_rows": rec.failed_rows,
                               "bytes": 0})


# -- a local worker process ---------------------------------------------------------------------------

def _main(job_file: str) -> int:
    from mlyard.core.settings import Settings, apply_engine_env

    settings = Settings()  # from the environment the batch inference handed over
    apply_engine_env(settings)
    job = BatchJob.model_validate_json(Path(job_file).read_text())
    try:
        Worker(job, Storage(settings), emit_to_stdout).run()
    except BatchFailed as exc:
        emit_to_stdout({"event": "abort", "error": exc.reason})
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a worker process
    code = _main(sys.argv[1])
    sys.stdout.flush()
    os._exit(code)  # a timed-out model call may still hold a thread
