"""Every line a flow run logs, also as a structured record (core/logrecords.py).

`install(settings)` (called by `mlyard.flows.platform.Platform`, which every flow builds first, or by the flow
itself where it builds none: notebooks, RAG syncs) adds one
handler to Prefect's run loggers: whatever a training, tuning, batch inference, evaluation or endpoint
flow logs (its script's output lines included) still goes to the Prefect log as before, and also, with
the run's category and ids, to `<home>/logs/records/<category>/<YYYY-MM-DD>.jsonl` (private to the user,
appended with one write per record, so the processes of one day share a file), or to stdout as JSON
lines in a Kubernetes pod. The ids come from the flow run: its own id is the training's, tuning's,
batch inference's or evaluation's id; a batch worker's records carry its batch inference's id.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlyard.core import logrecords as lr
from mlyard.core.names import (
    FLOW_ADD_STAGE,
    FLOW_BATCH,
    FLOW_BATCH_WORKER,
    FLOW_CONTROL_PROMOTION,
    FLOW_DELETE_ENDPOINT,
    FLOW_DEPLOY_ENDPOINT,
    FLOW_EVALUATE,
    FLOW_NOTEBOOK,
    FLOW_PIPELINE_RUN,
    FLOW_PROMOTE_STAGE,
    FLOW_RAG_SYNC,
    FLOW_ROLLOUT,
    FLOW_SET_TRAFFIC,
    FLOW_SYNC_ENDPOINT,
    FLOW_TRAIN,
    FLOW_TUNE,
)
from mlyard.core.settings import Settings, in_kubernetes_pod
from mlyard.tasks.logstore import private_dirs

# flow name -> (category, the id field its own run id fills)
FLOWS: dict[str, tuple[str, str | None]] = {
    FLOW_TRAIN: ("training", "trainingId"), FLOW_TUNE: ("tuning", "hyperparameterTuningId"),
    FLOW_BATCH: ("batch", "batchInferenceId"), FLOW_BATCH_WORKER: ("batch", None),
    FLOW_EVALUATE: ("evaluation", "evaluationId"), FLOW_DEPLOY_ENDPOINT: ("endpoint", None),
    FLOW_ADD_STAGE: ("endpoint", None), FLOW_PROMOTE_STAGE: ("endpoint", None), FLOW_DELETE_ENDPOINT: ("endpoint", None),
    FLOW_SYNC_ENDPOINT: ("endpoint", None), FLOW_PIPELINE_RUN: ("pipeline", None), FLOW_RAG_SYNC: ("rag", None),
    FLOW_NOTEBOOK: ("notebook", None), FLOW_SET_TRAFFIC: ("endpoint", None), FLOW_ROLLOUT: ("endpoint", None),
    FLOW_CONTROL_PROMOTION: ("endpoint", None)}
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
DONE = "Finished in state Completed()"


def records_dir(settings: Settings) -> Path:
    return settings.home_dir / "logs" / "records"


def _spec_field(parameters: Any, field: str) -> Any:
    spec = (parameters or {}).get("spec")
    return spec.get(field) if isinstance(spec, dict) else getattr(spec, field, None)


_BY_RUN: dict[str, tuple[str, dict[str, Any]] | None] = {}


def _run_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]] | None:
    """The category and ids of the flow run `record` was logged in (None outside a known flow). A
    thread without the run's context (the one relaying a script's output) is known by the run id
    Prefect's logger puts on the record."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow is None:
        return _BY_RUN.get(str(getattr(record, "flow_run_id", "")))
    run_id = str(ctx.flow_run.id)
    if run_id not in _BY_RUN:
        _BY_RUN[run_id] = _fields(ctx)
    return _BY_RUN[run_id]


def _fields(ctx: Any) -> tuple[str, dict[str, Any]] | None:
    known = FLOWS.get(ctx.flow.name)
    if known is None:
        return None
    cat, own = known
    run_id = str(ctx.flow_run.id)
    from mlyard.core.access import project_of_tags, user_of_tags

    tags = ctx.flow_run.tags or ()  # whose run: the seed's easymakerAppKey (the project), and the user
    fields: dict[str, Any] = {"flowRunId": run_id, "easymakerAppKey": project_of_tags(tags), "user": user_of_tags(tags)}
    if own:
        fields[own] = run_id
    if ctx.flow.name == FLOW_BATCH_WORKER:
        fields["batchInferenceId"] = _spec_field(ctx.parameters, "batch_id")
    fields["name"] = next((v for f in ("name", "endpoint", "rag", "notebook")
                           if isinstance(v := _spec_field(ctx.parameters, f), str)), None)
    return cat, fields


class RecordHandler(logging.Handler):
    """Writes each record of a known flow run as a JSON line (see the module's docstring)."""

    def __init__(self, folder: Path | None, stream: Any = None):
        super().__init__(logging.INFO)
        self.folder, self.stream = folder, stream
        self._fd: int | None = None
        self._day = ""
        self._lock_day = threading.Lock()

    def _file(self, cat: str) -> int:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        assert self.folder is not None
        path = self.folder / cat / f"{day}.jsonl"
        with self._lock_day:
            if self._fd is None or self._day != str(path):
                private_dirs(path.parent)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                if self._fd is not None:
                    os.close(self._fd)
                self._fd, self._day = fd, str(path)
            return self._fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            found = _run_fields(record)
            if found is None or (record.name == "prefect.task_runs" and record.getMessage() == DONE):
                return  # outside a known flow; or a step's routine end (its failure is kept)
            cat, fields = found
            doc = lr.document(cat, lr.level_name(record.levelno), record.getMessage(),
                              time=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                              + f".{int(record.msecs):03d}Z", **fields)
            data = lr.line(doc)
            if self.stream is not None:
                self.stream.write(data.decode())
                self.stream.flush()
            else:
                os.write(self._file(cat), data)
        except Exception:  # noqa: BLE001 - a log record must never fail the run
            self.handleError(record)


_INSTALLED: dict[int, RecordHandler] = {}


def install(settings: Settings) -> None:
    """Add the handler to Prefect's run loggers, once per process (a forked child installs its own)."""
    if os.getpid() in _INSTALLED:
        return
    handler = RecordHandler(None, sys.stdout) if in_kubernetes_pod() else RecordHandler(records_dir(settings))
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, RecordHandler)]:
            logger.removeHandler(old)  # the parent's, inherited across a fork
        logger.addHandler(handler)
    _INSTALLED[os.getpid()] = handler
