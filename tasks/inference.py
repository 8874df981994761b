"""Batch inference: stream records through a model in batches and write predictions aligned to the rows.

Plain parts, no Prefect (the flows in flows/batch_inference.py and flows/evaluation.py add state):
- `select_files`: input files under a URI after include and exclude globs (exclude wins).
- `plan`: shards. A file is one shard, except that a JSONL file is cut at line boundaries into byte
  ranges so several workers share one big file; each shard knows its first row number.
- `read_records`: JSON (ijson, record by record), JSONL and CSV, never a whole file in memory.
- `Model`: an MLflow pyfunc model loaded once per worker; predict_proba where the model has it.
- `Worker`: the loop. Batches of `batch_size` rows; each model call has a timeout; a batch that times
  out or raises is written as error rows and recorded (file, rows, error); the output of a shard is
  committed atomically and then its record, so a rerun skips every shard that has a record.
- `Layout`: where predictions, shard records and the summary live under output_uri.
`python -m tasks.inference JOB.json` is one local worker process; it reports on stdout with
`@mlyard {json}` lines.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from mlyard.errors import BadRecord, BatchFailed, SpecError, StorageNotFound, TrainingStopped
from mlyard.specs import is_mlflow_uri
from tasks.models import Model
from tasks.storage import Storage, _glob_match

EVENT_PREFIX = "@mlyard "
PROGRESS_SECONDS = 2.0
MIN_SPLIT_BYTES = 1 << 20  # a JSONL file smaller than this is never cut


# -- choosing and planning input --------------------------------------------------------------------

def select_files(storage: Storage, input_uri: str, include: list[str], exclude: list[str]) -> list[tuple[str, str]]:
    """(name, uri) of each input file, sorted. Raises SpecError when the globs leave nothing."""
    names = storage.list(input_uri, field="input_uri")
    single = storage.exists(input_uri, "input_uri")
    chosen = [n for n in names if any(_glob_match(n, p) for p in include) and not any(_glob_match(n, p) for p in exclude)]
    chosen = [n for n in chosen if not n.startswith("_mlyard/")]
    if not chosen:
        raise SpecError("include/exclude", {"include": include, "exclude": exclude},
                        f"patterns that match at least one file under {input_uri}; it holds: "
                        f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    return [(n, input_uri if single else f"{input_uri.rstrip('/')}/{n}") for n in chosen]


@dataclass(frozen=True)
class Shard:
    file: str  # name relative to input_uri
    index: int
    count: int  # shards of this file
    start: int = 0  # byte offset of its first line
    end: int | None = None  # byte offset past its last line (None: the end of the file)
    first_row: int = 0
    size: int = 0  # bytes

    @property
    def key(self) -> str:
        return f"{self.file}#{self.index + 1}-of-{self.count}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(files: list[tuple[str, Path]], fmt: str, workers: int) -> list[Shard]:
    """Shards for `workers`. JSONL files of at least MIN_SPLIT_BYTES are cut into about
    `workers` pieces at line boundaries (one pass counting newlines gives each piece's first row)."""
    shards: list[Shard] = []
    for name, path in files:
        size = path.stat().st_size
        pieces = min(workers, max(1, size // MIN_SPLIT_BYTES)) if fmt == "jsonl" else 1
        if pieces <= 1:
            shards.append(Shard(name, 0, 1, 0, None, 0, size))
            continue
        cuts = _line_cuts(path, size, pieces)
        bounds = list(zip(cuts, cuts[1:] + [(size, None)]))
        for i, ((start, row), (end, _)) in enumerate(bounds):
            shards.append(Shard(name, i, len(bounds), start, end if i < len(bounds) - 1 else None, row, end - start))
    return shards


def _line_cuts(path: Path, size: int, pieces: int) -> list[tuple[int, int]]:
    """(byte offset, row number) of the line starts nearest to size*i/pieces."""
    targets = [size * i // pieces for i in range(1, pieces)]
    cuts, rows, pos = [(0, 0)], 0, 0
    with open(path, "rb") as fh:
        while targets:
            chunk = fh.read(1 << 22)
            if not chunk:
                break
            while targets and pos + len(chunk) > targets[0]:
                nl = chunk.find(b"\n", max(0, targets[0] - pos))
                if nl < 0:
                    break
                cut_rows = rows + chunk.count(b"\n", 0, nl + 1)
                if pos + nl + 1 < size and pos + nl + 1 > cuts[-1][0]:
                    cuts.append((pos + nl + 1, cut_rows))
                targets.pop(0)
            rows += chunk.count(b"\n")
            pos += len(chunk)
    return cuts


# -- reading records -----------------------------------------------------------------------------

def read_records(path: Path, fmt: str, start: int = 0, end: int | None = None,
                 first_row: int = 0) -> Iterator[tuple[int, Any, int]]:
    """(row number, record or BadRecord, bytes read so far) for each record of the shard.

    Row numbers: the 0-based line of a JSONL file (blank lines are skipped but counted), the index
    in a JSON file, the data row of a CSV file (after its header)."""
    if fmt == "jsonl":
        yield from _jsonl(path, start, end, first_row)
    elif fmt == "json":
        yield from _json(path)
    elif fmt == "csv":
        yield from _csv(path)
    else:
        raise SpecError("input_format", fmt, "json, jsonl or csv")


def _jsonl(path: Path, start: int, end: int | None, row: int) -> Iterator[tuple[int, Any, int]]:
    done = 0
    limit = None if end is None else end - start
    with open(path, "rb") as fh:
        fh.seek(start)
        for line in fh:
            done += len(line)
            if line.strip():
                try:
                    yield row, json.loads(line), done
                except ValueError as exc:
                    yield row, BadRecord(f"not valid JSON: {exc}"), done
            row += 1
            if limit is not None and done >= limit:
                return


def _json(path: Path) -> Iterator[tuple[int, Any, int]]:
    import ijson

    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
        fh.seek(0)
        if head[:1] == b"[":
            prefix = "item"
        elif head[:1] == b"{":
            prefix = "instances.item"
        else:
            raise SpecError("input_format", "json", f"{path.name} must hold a JSON list of records or "
                                                    '{"instances": [...]}; use jsonl for a record per line')
        try:
            for row, record in enumerate(ijson.items(fh, prefix, use_float=True)):
                yield row, record, fh.tell()
        except ijson.JSONError as exc:
            raise SpecError("input_uri", path.name, f"a valid JSON file ({exc})") from exc


def _csv(path: Path) -> Iterator[tuple[int, Any, int]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            return
        raw = fh.buffer if hasattr(fh, "buffer") else None
        for row, values in enumerate(reader):
            if not values:
                continue
            if len(values) != len(header):
                yield row, BadRecord(f"{len(values)} values for {len(header)} columns"), _tell(raw)
                continue
            yield row, {k: _scalar(v) for k, v in zip(header, values)}, _tell(raw)


def _tell(raw) -> int:
    try:
        return raw.tell() if raw is not None else 0
    except (OSError, ValueError):
        return 0


def _scalar(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def features(records: list[Any], feature_fields: list[str] | None, skip: set[str]):
    """The model input for a batch: a 2-D array for vectors, a DataFrame for named fields."""
    import numpy as np

    first = records[0]
    if isinstance(first, list):
        return np.asarray(records)
    if not isinstance(first, dict):
        raise BadRecord(f"a record must be an object or a list, got {type(first).__name__}")
    fields = feature_fields or [k for k in first if k not in skip]
    if len(fields) == 1 and isinstance(first.get(fields[0]), list):
        return np.asarray([r[fields[0]] for r in records])
    import pandas as pd

    nested = [f for f in fields if isinstance(first.get(f), (list, dict))]
    if nested:
        raise BadRecord(f"field {nested[0]!r} holds a {type(first[nested[0]]).__name__} next to other fields "
                        f"({', '.join(fields[:5])}); feed one vector field alone or scalars only: set feature_fields, "
                        "id_field or drop_fields")
    missing = [f for f in fields if any(f not in r for r in records)]
    if missing:
        raise BadRecord(f"field {missing[0]!r} is missing in some rows")
    return pd.DataFrame.from_records([[r[f] for f in fields] for r in records], columns=fields)


# -- the model -------------------------------------------------------------------------------------

def fetch_model(storage: Storage, uri: str, dest: Path) -> Path:
    """A local copy of the model at `uri`: models:/ and runs:/ through MLflow, locations through storage."""
    import mlflow.artifacts

    if is_mlflow_uri(uri):
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


# -- where things go ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    output_uri: str

    def _join(self, *parts: str) -> str:
        return "/".join([self.output_uri.rstrip("/"), *parts])

    def output(self, file: str) -> str:
        return self._join(f"{file}.predictions.jsonl")

    def part(self, shard: Shard) -> str:
        return self._join("_mlyard", "parts", f"{shard.file}.{shard.index + 1}-of-{shard.count}.jsonl")

    def target(self, shard: Shard) -> str:
        return self.output(shard.file) if shard.count == 1 else self.part(shard)

    def record(self, shard: Shard) -> str:
        return self._join("_mlyard", "shards", quote(shard.key, safe="") + ".json")

    @property
    def records_dir(self) -> str:
        return self._join("_mlyard", "shards")

    @property
    def manifest(self) -> str:
        return self._join("_mlyard", "batch.json")

    @property
    def summary(self) -> str:
        return self._join("_summary.json")

    @property
    def failures(self) -> str:
        return self._join("_failures.jsonl")


# -- the worker loop -------------------------------------------------------------------------------

@dataclass
class Job:
    """What a worker needs (JSON-able, so a worker can be another process or another pod)."""

    model_uri: str
    output_uri: str
    input_format: str
    batch_size: int
    inference_timeout_seconds: float
    max_failed_batches: int
    output_probabilities: bool
    id_field: str | None = None
    feature_fields: list[str] | None = None
    drop_fields: list[str] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # file -> local path or URI to stage in
    origins: dict[str, str] = field(default_factory=dict)  # file -> its URI under input_uri
    scratch: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ShardRecord:
    key: str
    file: str
    rows: int = 0
    failed_rows: int = 0
    failed_batches: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)


class Worker:
    """Runs shards of a job: `emit` receives progress, failure and shard events (dicts)."""

    def __init__(self, job: Job, storage: Storage, emit: Callable[[dict], None] = lambda e: None,
                 should_stop: Callable[[], str | None] = lambda: None, model: Model | None = None,
                 failed: Callable[[], str | None] = lambda: None):
        self.job, self.storage, self.emit, self.should_stop, self.failed = job, storage, emit, should_stop, failed
        self.layout = Layout(job.output_uri)
        self.model = model or Model(job.model_uri)
        self.with_proba = job.output_probabilities and self.model.has_proba
        self.skip = {f for f in (job.id_field, *job.drop_fields) if f}
        self._caller = _Caller()
        self.failed_batches = 0

    def run(self) -> list[ShardRecord]:
        scratch = Path(tempfile.mkdtemp(prefix="mlyard-batch-", dir=self.job.scratch))
        try:
            return [self.run_shard(Shard(**s), scratch) for s in self.job.shards]
        finally:
            self._caller.close()
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)

    def _local(self, file: str, scratch: Path) -> Path:
        src = self.job.sources[file]
        if Path(src).is_file():
            return Path(src)
        return self.storage.stage_in(src, scratch / "input" / file.replace("/", "__"), "input_uri")

    def run_shard(self, shard: Shard, scratch: Path) -> ShardRecord:
        started = time.monotonic()
        rec = ShardRecord(shard.key, shard.file)
        path = self._local(shard.file, scratch)
        tmp = scratch / f"out-{shard.index}-{os.getpid()}.jsonl"
        last = started
        batch: list[tuple[int, Any]] = []
        done_bytes = 0
        with open(tmp, "w", buffering=1 << 20) as out:
            for row, record, done_bytes in read_records(path, self.job.input_format, shard.start, shard.end, shard.first_row):
                if isinstance(record, BadRecord):
                    self._fail(rec, out, shard, [(row, None)], str(record))
                    continue
                batch.append((row, record))
                if len(batch) >= self.job.batch_size:
                    self._batch(rec, out, shard, batch)
                    batch = []
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

    def _batch(self, rec: ShardRecord, out, shard: Shard, batch: list[tuple[int, Any]]) -> None:
        job = self.job
        try:
            x = features([r for _, r in batch], job.feature_fields, self.skip)
            preds, proba = self._caller.call(lambda: self.model.predict(x, self.with_proba), job.inference_timeout_seconds)
            if len(preds) != len(batch):
                raise ValueError(f"the model returned {len(preds)} predictions for {len(batch)} rows")
        except FutureTimeout:
            self._caller = _Caller()  # the stuck call keeps its own thread
            self._fail(rec, out, shard, batch, f"timed out after {job.inference_timeout_seconds:g} s")
            return
        except Exception as exc:
            self._fail(rec, out, shard, batch, f"{type(exc).__name__}: {exc}"[:500])
            return
        idf = job.id_field
        dumps = json.dumps
        if proba is None:
            for (row, r), p in zip(batch, preds):
                line = {"row": row, "prediction": p} if idf is None else {"row": row, "id": r.get(idf), "prediction": p}
                out.write(dumps(line) + "\n")
        else:
            for (row, r), p, pr in zip(batch, preds, proba.tolist()):
                line = ({"row": row, "prediction": p, "probabilities": pr} if idf is None else
                        {"row": row, "id": r.get(idf), "prediction": p, "probabilities": pr})
                out.write(dumps(line) + "\n")
        rec.rows += len(batch)

    def _fail(self, rec: ShardRecord, out, shard: Shard, batch: list[tuple[int, Any]], error: str) -> None:
        idf = self.job.id_field
        for row, r in batch:
            line: dict[str, Any] = {"row": row}
            if idf is not None:
                line["id"] = r.get(idf) if isinstance(r, dict) else None
            line["error"] = error
            out.write(json.dumps(line) + "\n")
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


# -- reading results back ------------------------------------------------------------------------------

def done_records(storage: Storage, layout: Layout) -> dict[str, ShardRecord]:
    try:
        names = storage.list(layout.records_dir, "*.json", field="output_uri")
    except StorageNotFound:
        return {}
    out = {}
    for name in names:
        data = json.loads(storage.read_bytes(f"{layout.records_dir}/{name}", "output_uri"))
        out[data["key"]] = ShardRecord(**data)
    return out



def concat(paths: list[Path], dest: Path) -> None:
    with open(dest, "wb") as out:
        for p in paths:
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    out.write(chunk)


def rows_per_second(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else 0.0


# -- several workers -----------------------------------------------------------------------------------

def assign(shards: list[Shard], workers: int) -> list[list[Shard]]:
    """Spread shards over at most `workers` workers, biggest first onto the least loaded."""
    groups: list[list[Shard]] = [[] for _ in range(min(workers, len(shards)))]
    loads = [0] * len(groups)
    for shard in sorted(shards, key=lambda s: -s.size):
        i = loads.index(min(loads))
        groups[i].append(shard)
        loads[i] += max(shard.size, 1)
    return [g for g in groups if g]


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


def run_processes(groups: list[list[Shard]], job: Job, settings_env: dict[str, str], scratch: Path,
                  on_event: Callable[[dict], None], log: Callable[[str], None],
                  should_stop: Callable[[], str | None], failed: Callable[[], str | None] = lambda: None) -> None:
    """One local worker process per group, each in its own process group. Raises TrainingStopped
    when `should_stop` gives a reason; BatchFailed when `failed` does (failure budget spent, max
    run time passed) or a worker gave up or died. Either way every worker process is ended."""
    from mlyard.errors import TrainingFailed
    from tasks.launch import Supervisor

    stop: list[str] = []
    errors: list[str] = []

    def stop_reason() -> str | None:
        if not stop and not errors:
            reason = should_stop()
            if reason:
                stop.append(reason)
            else:
                error = failed()
                if error:
                    errors.append(error)
        return stop[0] if stop else (errors[0] if errors else None)

    def on_line(line: str) -> None:
        if line.startswith(EVENT_PREFIX):
            event = json.loads(line[len(EVENT_PREFIX):])
            if event.get("event") == "abort":
                errors.append(event["error"])
            else:
                on_event(event)
        elif line.strip():
            log(line)

    def run(i: int, group: list[Shard]) -> None:
        job_file = scratch / f"worker-{i}.json"
        job_file.write_text(json.dumps({**job.as_dict(), "shards": [s.as_dict() for s in group], "scratch": str(scratch)}))
        argv = [sys.executable, "-m", "tasks.inference", str(job_file)]
        root = Path(__file__).resolve().parent.parent
        # Settings (storage credentials among them) go through the environment, never into a file.
        env = {**os.environ, **settings_env,
               "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        try:
            Supervisor(argv, env, root, on_line, should_stop=stop_reason, poll_seconds=0.2, grace_seconds=3).run()
        except TrainingStopped:
            pass
        except TrainingFailed as exc:
            if not errors:
                errors.append(f"worker {i} ended ({exc.reason}): " + " | ".join(exc.last_lines[-3:]))

    threads = [threading.Thread(target=run, args=(i, g), name=f"mlyard-worker-{i}", daemon=True)
               for i, g in enumerate(groups)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if stop:
        raise TrainingStopped(stop[0])
    if errors:
        raise BatchFailed(errors[0])


# -- a worker process ---------------------------------------------------------------------------------

def _main(job_file: str) -> int:
    from mlyard.settings import Settings, apply_engine_env

    spec = json.loads(Path(job_file).read_text())
    settings = Settings()  # from the environment the batch inference handed over
    apply_engine_env(settings)
    job = Job(**spec)

    def emit(event: dict) -> None:
        sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
        sys.stdout.flush()

    # Events go to the batch inference through a pipe: if it is killed, the next event (at most
    # PROGRESS_SECONDS away) raises BrokenPipeError and this worker ends instead of racing a rerun.
    try:
        Worker(job, Storage(settings), emit).run()
    except BatchFailed as exc:
        emit({"event": "abort", "error": exc.reason})
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a worker process
    code = _main(sys.argv[1])
    sys.stdout.flush()
    os._exit(code)  # a timed-out model call may still hold a thread
