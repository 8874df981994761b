"""Azure ML entry scripts: a `score.py` with `init()` (once per worker, the model directory in
AZUREML_MODEL_DIR) and `run(raw_body)` (per request), served the way Azure's inference HTTP server
serves them:

    GET  /          liveness ("Healthy")
    GET  /score     run("") ; POST /score: run(the raw request body, as text when it is UTF-8)

(Scripts that declare their inputs with inference-schema decorators, run(**json_body) and
/swagger.json, are not served yet.)

A `run()` that raises answers 500 with the exception and where it happened in the script (file and
line); the server goes on. An `init()` that raises leaves the server up: liveness says it is
unhealthy and why, and /score answers 503 with that reason, instead of a dead port.

`python -m serving.azure --entry_script score.py [--model_dir DIR] [--port 5001] [--worker_count N]`
takes azmlinfsrv's flags; `mlyard serve --entry-script score.py` does the same.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from mlyard.errors import SpecError
from serving import asgi

DEFAULT_PORT = 5001


class EntryScript:
    """The user's script, loaded and initialised once in this process."""

    def __init__(self, path: Path | str, model_dir: Path | str | None = None):
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise SpecError("entry_script", str(path), "a Python file with init() and run()")
        if model_dir is not None:
            model = Path(model_dir).resolve()
            if not model.exists():
                raise SpecError("model_dir", str(model_dir), "a directory that exists (it becomes AZUREML_MODEL_DIR)")
            os.environ["AZUREML_MODEL_DIR"] = str(model)
        os.environ["AZUREML_ENTRY_SCRIPT"] = str(self.path)
        self.init_error: str | None = None
        self.module: Any = None
        try:
            spec = importlib.util.spec_from_file_location(self.path.stem, self.path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(self.path.parent))
            spec.loader.exec_module(module)
            if not callable(getattr(module, "run", None)):
                raise SpecError("entry_script", str(path), "a script that defines run()")
            self.module = module
            if callable(getattr(module, "init", None)):
                module.init()
        except SpecError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the server stays up and says why
            self.init_error = f"init() failed: {where(exc, self.path)}"

    def call(self, body: bytes) -> Any:
        run = self.module.run
        try:
            raw: Any = body.decode("utf-8")
        except UnicodeDecodeError:
            raw = body
        return run(raw)


def where(exc: BaseException, script: Path) -> str:
    """`Type: message (score.py, line N, in run)`: the deepest frame inside the script, else the last."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if Path(f.filename).resolve() == script]
    frame = inside[-1] if inside else (frames[-1] if frames else None)
    place = f" ({Path(frame.filename).name}, line {frame.lineno}, in {frame.name})" if frame else ""
    return f"{type(exc).__name__}: {exc}{place}"


class AzureApp:
    """The ASGI application over one entry script; run() calls go to `workers` threads."""

    def __init__(self, script: EntryScript, workers: int = 1, max_body_bytes: int = 32 * 1024 * 1024):
        self.script = script
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mlyard-score")
        self.max_body = max_body_bytes

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await asgi.lifespan(receive, send)
        if scope["type"] != "http":
            return
        status, body, ctype = await self._route(scope["method"], scope["path"], receive)
        await asgi.reply(send, status, body, ctype)

    async def _route(self, method: str, path: str, receive) -> tuple[int, bytes, bytes]:
        script = self.script
        if path == "/":
            if script.init_error:
                return 503, _error(script.init_error), b"application/json"
            return 200, b"Healthy", b"text/plain; charset=utf-8"
        if path != "/score":
            return 404, _error(f"no route {method} {path}; use / and /score"), b"application/json"
        if method not in ("GET", "POST"):
            return 405, _error(f"method {method} is not allowed on /score; use GET or POST"), b"application/json"
        if script.init_error:
            return 503, _error(script.init_error), b"application/json"
        body = b""
        if method == "POST":
            try:
                body = await asgi.read_body(receive, self.max_body)
            except asgi.BodyTooLarge as exc:
                return 413, _error(str(exc)), b"application/json"
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self.pool, script.call, body)
        except Exception as exc:  # noqa: BLE001 - the script's error, and where
            return 500, _error(where(exc, script.path)), b"application/json"
        if isinstance(out, bytes):
            return 200, out, b"application/octet-stream"
        if isinstance(out, str):
            return 200, out.encode(), b"application/json"
        try:
            return 200, orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), b"application/json"
        except TypeError as exc:
            return 500, _error(f"run() returned a {type(out).__name__} that is not JSON ({exc})"), b"application/json"


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.azure",
                                     description="Serve an Azure ML entry script (azmlinfsrv's flags).")
    parser.add_argument("--entry_script", required=True, help="Path of the scoring script (init() and run()).")
    parser.add_argument("--model_dir", default=None, help="Directory of the model; becomes AZUREML_MODEL_DIR.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="Port to listen on (default 5001).")
    parser.add_argument("--worker_count", type=int, default=1, help="Threads that run run() concurrently.")
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default: every interface).")
    args = parser.parse_args(argv)
    serve_entry_script(args.entry_script, args.model_dir, args.host, args.port, args.worker_count)


def serve_entry_script(entry_script: str, model_dir: str | None, host: str, port: int, workers: int = 1) -> None:
    from serving.server import run_app

    try:
        script = EntryScript(entry_script, model_dir)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if script.init_error:
        print(f"warning: {script.init_error}; the server answers with this reason until it is fixed", file=sys.stderr)
    run_app(AzureApp(script, workers), host, port,
            on_ready=lambda url: print(f"serving {script.path.name} on {url}  (score: {url}/score)", flush=True))


if __name__ == "__main__":
    main()
