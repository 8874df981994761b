"""Inference log records: one JSON object per line, with the fields of the console's log search
(category, logLevel, body, logType, time) and of its endpoint logs (endpointId, endpointStageId,
inferenceId, action, modelName): core/logrecords.py, indexed for `mlyard logs` (tasks/logstore.py). The endpoint and stage ids come from MLYARD_ENDPOINT_ID and
MLYARD_ENDPOINT_STAGE_ID, which the endpoint flow sets on each replica; without them they are null.
"""

from __future__ import annotations

import sys
import threading
import uuid
from typing import IO, Any

import orjson

from mlyard.core.environment import served_endpoint
from mlyard.core.logrecords import LOG_TYPE, utc_now

CATEGORY = "mlyard.inference"
ACTION = "Endpoint.Model"


def new_id() -> str:
    return uuid.uuid4().hex


class InferenceLog:
    """Writes records to a file (appended, a line each) or a stream. `every_request` False keeps only
    warnings and errors."""

    def __init__(self, target: str | IO[str] | None = None, every_request: bool = True, action: str = ACTION,
                 endpoint_id: str | None = None, stage_id: str | None = None):
        if target is None or target == "-":
            self._out: IO[str] = sys.stdout if target == "-" else sys.stderr
        elif isinstance(target, str):
            self._out = open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the server
        else:
            self._out = target
        self.every_request = every_request
        served, stage = served_endpoint()
        self.endpoint_id = endpoint_id or served
        self.stage_id = stage_id or stage
        self.action = action
        self._lock = threading.Lock()

    def record(self, level: str, model: str, body: str, inference_id: str | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        doc = {"category": CATEGORY, "logLevel": level, "body": body, "logType": LOG_TYPE,
               "time": utc_now(),
               "endpointId": self.endpoint_id, "endpointStageId": self.stage_id,
               "inferenceId": inference_id or new_id(), "action": self.action, "modelName": model, **(extra or {})}
        line = orjson.dumps(doc).decode() + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()
        return doc

    def request(self, model: str, method: str, path: str, status: int, rows: int, seconds: float,
                inference_id: str, error: str | None = None, usage: Any = None) -> None:
        """One request's record; a generative answer's `usage` (serving/usage.py) gives its tokens in and
        out, time to first token and tokens a second, in the body and as fields (promptTokens, ...)."""
        level = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
        if level == "INFO" and not self.every_request:
            return
        extra = None
        if usage is None:
            body = f"{method} {path} {status} rows={rows} {seconds * 1000:.2f} ms"
        else:
            ttft = usage.ttft_ms
            rate = usage.completion / (seconds - ttft / 1000) if ttft is not None and seconds > ttft / 1000 else None
            extra = {"promptTokens": usage.prompt, "completionTokens": usage.completion,
                     "ttftMs": round(ttft, 1) if ttft is not None else None,
                     "tokensPerSecond": round(rate, 2) if rate is not None else None}
            body = (f"{method} {path} {status} tokens in={usage.prompt} out={usage.completion} "
                    f"first token {ttft or 0:.0f} ms, {seconds * 1000:.2f} ms")
        self.record(level, model, f"{body}: {error}" if error else body, inference_id, extra)


def tail(path: Any, n: int) -> list[dict[str, Any]]:
    """The last `n` records of a log file (none when it does not exist yet); a torn line is left out."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines()[-n:]:
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out
