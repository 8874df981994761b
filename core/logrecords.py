"""Structured log records: the fields of the console's log search, one JSON object per line.

Common fields: `category`, `logLevel` (INFO, WARNING, ERROR), `body`, `logType` ("mlyard"), `time`
(UTC, ISO 8601 with milliseconds). Then the ids of what wrote it: `trainingId`,
`hyperparameterTuningId`, `batchInferenceId`, `evaluationId`, `endpointId`, `endpointStageId`,
`inferenceId`, `action`, `modelName`; mlyard adds `flowRunId` (the Prefect run that wrote it) and
`name` (the training's, endpoint's ... own name). A field that does not apply is left out.

Flow runs write them (tasks/logrecords.py) under `<home>/logs/records/<category>/<day>.jsonl`, the model
server writes its inference records (serving/inference_log.py), and `mlyard logs` queries them all
through one index (tasks/logstore.py). In a Kubernetes pod they go to stdout, for the cluster's log
stack.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

LOG_TYPE = "mlyard"
CATEGORIES = ("training", "tuning", "batch", "evaluation", "endpoint", "inference", "rag", "pipeline", "notebook")
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


def category(short: str) -> str:
    """`training` -> `mlyard.training` (a full name is kept)."""
    return short if short.startswith("mlyard.") else f"mlyard.{short}"


def level_name(levelno: int) -> str:
    """Python's levels on the console's three (DEBUG kept for completeness, CRITICAL is ERROR)."""
    return "ERROR" if levelno >= 40 else "WARNING" if levelno >= 30 else "INFO" if levelno >= 20 else "DEBUG"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def document(cat: str, level: str, body: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"category": category(cat), "logLevel": level, "body": body, "logType": LOG_TYPE,
                           "time": fields.pop("time", None) or utc_now()}
    doc.update((k, v) for k, v in fields.items() if v is not None)
    return doc


def line(doc: dict[str, Any]) -> bytes:
    """One record as a line (a single write: appended whole by every process sharing the file)."""
    return orjson.dumps(doc) + b"\n"
