"""An Azure ML entry script in a process of its own, run by serving/azure.py's server with the interpreter
of the environment its deployment names (a virtual environment of that environment's packages alone,
tasks/azure_env.py), or the platform's when it names none. This file imports the standard library and
nothing else, so the script gets exactly the packages its file names and the server keeps its own.

`python -I entry_host.py SCRIPT PARENT_PID` loads SCRIPT (AZUREML_MODEL_DIR in its environment), calls its
init(), sends one frame saying how that went and what run() declares, then answers each request frame with
one answer frame until its input ends; it dies with the server (PARENT_PID). A frame is 8 bytes of length
(big-endian) then that many bytes: a request is the raw body; an answer is one byte of kind (below) and
its payload. What the script prints, from Python or from C, goes to the server's log, never into answers.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import signal
import struct
import sys
import traceback
from typing import Any, Callable

HEADER = struct.Struct(">Q")
# an answer's kinds: what run() returned as JSON, as a str (sent as it is), as bytes; the caller's mistake
# (a 400, its reason) and the script's error (a 500, what and where)
JSON, TEXT, BYTES, BAD, FAILED = b"j", b"s", b"b", b"4", b"5"


class Script:
    """The user's script, loaded and initialised once in this process."""

    def __init__(self, path: str):
        self.path = os.path.realpath(path)
        os.environ["AZUREML_ENTRY_SCRIPT"] = self.path
        self.refused: str | None = None  # not an entry script at all: the server refuses to start
        self.init_error: str | None = None
        self.schema: list | None = None  # input and output schemas, swagger versions (inference-schema)
        self.required: list[str] = []  # run()'s arguments without a default
        self.accepted: set[str] | None = None  # the arguments it takes (None: any, it has **kwargs)
        self.run: Callable[..., Any] = _missing
        try:
            spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(self.path))[0], self.path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, os.path.dirname(self.path))
            spec.loader.exec_module(module)
            if not callable(getattr(module, "run", None)):
                self.refused = "a script that defines run()"
                return
            self.run = module.run
            self.schema = _schema(module.run)
            self.required, self.accepted = _arguments(module.run)
            if callable(getattr(module, "init", None)):
                module.init()
        except BaseException as exc:  # noqa: BLE001 - the server stays up and says why
            self.init_error = f"init() failed: {where(exc, self.path)}"

    def hello(self) -> dict:
        return {"refused": self.refused, "init_error": self.init_error, "schema": self.schema}

    def call(self, body: bytes) -> tuple[bytes, bytes]:
        """(kind, payload) of one request."""
        if self.schema is not None and self.schema[0]:  # inference-schema: the body's fields as arguments
            doc, bad = self._fields(body)
            if bad is not None:
                return BAD, bad.encode()
            try:
                out = self.run(**doc)
            except Exception as exc:  # noqa: BLE001 - the decorators refused the body, or the script failed
                frames = traceback.extract_tb(exc.__traceback__)
                if frames and f"{os.sep}inference_schema{os.sep}" in frames[-1].filename:
                    return BAD, f"the body does not fit run()'s declared inputs: {type(exc).__name__}: {exc}".encode()
                return FAILED, where(exc, self.path).encode()
        else:
            raw: str | bytes
            try:
                raw = body.decode("utf-8")
            except UnicodeDecodeError:
                raw = body
            try:
                out = self.run(raw)
            except Exception as exc:  # noqa: BLE001 - the script's error, and where
                return FAILED, where(exc, self.path).encode()
        if isinstance(out, (bytes, bytearray)):
            return BYTES, bytes(out)
        if isinstance(out, str):
            return TEXT, out.encode("utf-8", "surrogatepass")
        try:
            return JSON, json.dumps(out, default=_plain).encode()
        except (TypeError, ValueError) as exc:
            return FAILED, f"run() returned a {type(out).__name__} that is not JSON ({exc})".encode()

    def _fields(self, body: bytes) -> tuple[dict, str | None]:
        """The body's fields as run()'s arguments, or why they cannot be (a 400)."""
        try:
            doc = json.loads(body) if body else {}
        except ValueError as exc:
            return {}, f"the body is not valid JSON ({exc}); send a JSON object of run()'s inputs"
        if not isinstance(doc, dict):
            return {}, "the body must be a JSON object of run()'s inputs, e.g. {\"data\": [[1, 2]]}"
        declared = list(self.schema[0].get("properties", {})) if self.schema else []
        missing = [n for n in self.required if n not in doc]
        if missing:
            return {}, f"the body lacks {missing[0]!r}; run() takes {', '.join(declared)}"
        unknown = [n for n in doc if n not in self.accepted] if self.accepted is not None else []
        if unknown:
            return {}, f"run() takes no {unknown[0]!r}; it takes {', '.join(declared)}"
        return doc, None


def _missing(*_: Any) -> Any:
    raise RuntimeError("the script defines no run()")


def _plain(value):
    """What json cannot write by itself: numpy's arrays and numbers, dates."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _schema(run) -> list | None:
    if importlib.util.find_spec("inference_schema") is None:
        return None
    from inference_schema import schema_util

    if not schema_util.is_schema_decorated(run):
        return None
    return [schema_util.get_input_schema(run) or {}, schema_util.get_output_schema(run) or {},
            [str(v) for v in schema_util.get_supported_versions(run)]]


def _arguments(run) -> tuple[list[str], set[str] | None]:
    try:
        params = inspect.signature(inspect.unwrap(run)).parameters.values()
    except (TypeError, ValueError):
        return [], None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return [p.name for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD], None
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in named if p.default is p.empty], {p.name for p in named}


def where(exc: BaseException, script: str) -> str:
    """`Type: message (score.py, line N, in run)`: the deepest frame inside the script, else the last."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if os.path.realpath(f.filename) == script]
    frame = inside[-1] if inside else (frames[-1] if frames else None)
    place = f" ({os.path.basename(frame.filename)}, line {frame.lineno}, in {frame.name})" if frame else ""
    return f"{type(exc).__name__}: {exc}{place}"


def read_frame(stream) -> bytes | None:
    """One frame's payload; None when the stream ends."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream, payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def _die_with(parent: int) -> None:
    """SIGKILL when the server dies (PR_SET_PDEATHSIG), even in the middle of a run()."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the end of our input still ends us
        pass
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)


def main() -> None:
    _die_with(int(sys.argv[2]))
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    script = Script(sys.argv[1])
    write_frame(out, json.dumps(script.hello()).encode())
    if script.refused or script.init_error:
        return
    stdin = sys.stdin.buffer
    while (body := read_frame(stdin)) is not None:
        kind, payload = script.call(body)
        write_frame(out, kind + payload)


if __name__ == "__main__":
    main()
