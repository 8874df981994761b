"""Azure ML entry scripts: a `score.py` with `init()` (once per worker, the model directory in
AZUREML_MODEL_DIR) and `run(raw_body)` (per request), served the way Azure's inference HTTP server
serves them:

    GET  /              liveness ("Healthy")
    GET  /score         run("") ; POST /score: run(the raw request body, as text when it is UTF-8)
    GET  /swagger.json  for a run() with inference-schema decorators: Swagger 2.0 (?version=2, the
                        default) or OpenAPI 3 (?version=3) of /score, from the decorators' schemas

A run() declared with inference-schema's `@input_schema` decorators is called as `run(**json_body)`:
the decorators turn each named field into its type (a numpy array, a DataFrame, ...). A body that is
not a JSON object, or misses a field the decorators require, answers 400.

A `run()` that raises answers 500 with the exception and where it happened in the script (file and
line); the server goes on. An `init()` that raises leaves the server up: liveness says it is
unhealthy and why, and /score answers 503 with that reason, instead of a dead port.

`python -m mlyard.serving.azure --entry_script score.py [--model_dir DIR] [--port 5001] [--worker_count N]`
takes azmlinfsrv's flags; `mlyard serve --entry-script score.py` does the same. The script runs in
processes of its own (serving/entry_host.py, one per worker), by the interpreter of the environment its
deployment names: a conda file or requirements.txt, built into a virtual environment of those packages
alone (tasks/azure_env.py), so it gets exactly the versions it names and this server keeps its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from mlyard.core.errors import SpecError
from mlyard.serving import asgi, entry_host
from mlyard.tasks.launch import script_environment

DEFAULT_PORT = 5001


class EntryScript:
    """The user's script, loaded and initialised in `workers` processes of its own (serving/entry_host.py),
    each run by `python` (the environment its deployment names, else this interpreter) with nothing of the
    platform's in its environment; a request goes to whichever is free. A process that dies is started
    again (its init() run again), and the request it held answers 500 with how it ended."""

    def __init__(self, path: Path | str, model_dir: Path | str | None = None, python: str | None = None,
                 workers: int = 1):
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise SpecError("entry_script", str(path), "a Python file with init() and run()")
        self._env = script_environment(os.environ)
        if model_dir is not None:
            model = Path(model_dir).resolve()
            if not model.exists():
                raise SpecError("model_dir", str(model_dir), "a directory that exists (it becomes AZUREML_MODEL_DIR)")
            self._env["AZUREML_MODEL_DIR"] = str(model)
        self._python = python or sys.executable
        first = _Process(self._python, self.path, self._env)
        hello = first.hello
        if hello.get("refused"):
            first.close()
            raise SpecError("entry_script", str(path), str(hello["refused"]))
        self.init_error: str | None = hello.get("init_error")
        schema = hello.get("schema")
        self.schema: tuple[dict, dict, list[str]] | None = tuple(schema) if schema else None  # type: ignore[assignment]
        self._idle: queue.SimpleQueue[_Process] = queue.SimpleQueue()
        self._lock = threading.Lock()  # two requests' processes may die at once
        self._all = [first]
        if self.init_error is None:  # every worker runs its own init(), as Azure's do
            self._all += [_Process(self._python, self.path, self._env) for _ in range(max(1, workers) - 1)]
        for proc in self._all:
            self._idle.put(proc)

    def call(self, body: bytes) -> tuple[bytes, bytes]:
        """(kind, payload) of one request (serving/entry_host.py's kinds), from a free process."""
        proc = self._idle.get()
        try:
            answer = proc.ask(body)
            if answer is None:  # it died in run(): a fresh one takes its place, the request answers why
                ended = f"the script's process ended in run() (exit code {proc.close()}); it is started again"
                fresh = _Process(self._python, self.path, self._env)
                with self._lock:
                    self._all = [fresh if p is proc else p for p in self._all]
                proc = fresh
                return entry_host.FAILED, ended.encode()
            return answer
        finally:
            self._idle.put(proc)

    def close(self) -> None:
        with self._lock:
            for proc in self._all:
                proc.close()


class _Process:
    """One `python -I entry_host.py SCRIPT` and its pipes."""

    def __init__(self, python: str, script: Path, env: dict[str, str]):
        host = Path(entry_host.__file__).resolve()
        self._proc = subprocess.Popen([python, "-I", str(host), str(script), str(os.getpid())], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        found = entry_host.read_frame(self._proc.stdout)
        try:
            hello = orjson.loads(found) if found is not None else None
        except orjson.JSONDecodeError:
            hello = None
        if not isinstance(hello, dict):
            code = self.close()
            hello = {"init_error": f"the script's process ended while loading it (exit code {code}; its log says why)"}
        self.hello: dict[str, Any] = hello

    def ask(self, body: bytes) -> tuple[bytes, bytes] | None:
        """(kind, payload) of run()'s answer; None when the process ended instead."""
        try:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            entry_host.write_frame(self._proc.stdin, body)
            answer = entry_host.read_frame(self._proc.stdout)
        except (BrokenPipeError, OSError):
            answer = None
        return (answer[:1], answer[1:]) if answer else None

    def close(self) -> int:
        """Its exit code, once ended."""
        if self._proc.poll() is None:
            self._proc.kill()
        return self._proc.wait()


def swagger(script: EntryScript, version: str) -> dict[str, Any]:
    """Swagger 2.0 (version "2") or OpenAPI 3 ("3") of the entry script's routes."""
    assert script.schema is not None
    inputs, outputs, _ = script.schema
    error = {"type": "object", "properties": {"error": {"type": "string"}}}
    title = {"title": f"mlyard: {script.path.name}", "description": "An Azure ML entry script served by mlyard",
             "version": "1.0"}
    if version.startswith("3"):
        def content(ref: str) -> dict:
            return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
        return {"openapi": "3.0.1", "info": title, "paths": {
            "/": {"get": {"operationId": "ServiceHealthCheck", "responses": {
                "200": {"description": "The server is alive", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/score": {"post": {"operationId": "RunMLService", "requestBody": {"content": content("ServiceInput")},
                                "responses": {"200": {"description": "run()'s answer", "content": content("ServiceOutput")},
                                              "default": {"description": "An error", "content": content("ErrorResponse")}}}}},
            "components": {"schemas": {"ServiceInput": inputs, "ServiceOutput": outputs, "ErrorResponse": error}}}
    return {"swagger": "2.0", "info": title, "schemes": ["http"], "consumes": ["application/json"],
            "produces": ["application/json"], "paths": {
                "/": {"get": {"operationId": "ServiceHealthCheck", "responses": {
                    "200": {"description": "The server is alive", "schema": {"type": "string"}}}}},
                "/score": {"post": {"operationId": "RunMLService", "parameters": [
                    {"name": "serviceInputPayload", "in": "body", "schema": {"$ref": "#/definitions/ServiceInput"}}],
                    "responses": {"200": {"description": "run()'s answer", "schema": {"$ref": "#/definitions/ServiceOutput"}},
                                  "default": {"description": "An error", "schema": {"$ref": "#/definitions/ErrorResponse"}}}}}},
            "definitions": {"ServiceInput": inputs, "ServiceOutput": outputs, "ErrorResponse": error}}


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
        status, body, ctype = await self._route(scope["method"], scope["path"], receive, scope.get("query_string", b""))
        await asgi.reply(send, status, body, ctype)

    async def _route(self, method: str, path: str, receive, query: bytes = b"") -> tuple[int, bytes, bytes]:
        script = self.script
        if path == "/":
            if script.init_error:
                return 503, _error(script.init_error), b"application/json"
            return 200, b"Healthy", b"text/plain; charset=utf-8"
        if path == "/swagger.json" and method == "GET":
            if script.schema is None:
                return 404, _error("run() declares no inputs with inference-schema decorators, so there is no "
                                   "swagger.json"), b"application/json"
            from urllib.parse import parse_qs

            version = (parse_qs(query.decode("latin-1")).get("version") or ["2"])[0]
            if version not in ("2", "3"):
                return 400, _error(f"version {version!r} is not served; use 2 or 3"), b"application/json"
            return 200, orjson.dumps(swagger(script, version)), b"application/json"
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
        kind, payload = await loop.run_in_executor(self.pool, script.call, body)
        if kind == entry_host.BAD:
            return 400, _error(payload.decode(errors="replace")), b"application/json"
        if kind == entry_host.FAILED:
            return 500, _error(payload.decode(errors="replace")), b"application/json"
        if kind == entry_host.BYTES:
            return 200, payload, b"application/octet-stream"
        if kind == entry_host.JSON and (b"NaN" in payload or b"Infinity" in payload):
            payload = orjson.dumps(json.loads(payload))  # JSON's own null for what Python writes as NaN
        return 200, payload, b"application/json"


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlyard.serving.azure",
                                     description="Serve an Azure ML entry script (azmlinfsrv's flags).")
    parser.add_argument("--entry_script", required=True, help="Path of the scoring script (init() and run()).")
    parser.add_argument("--model_dir", default=None, help="Directory of the model; becomes AZUREML_MODEL_DIR.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="Port to listen on (default 5001).")
    parser.add_argument("--worker_count", type=int, default=1, help="Processes that run run() side by side.")
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default: every interface).")
    parser.add_argument("--conda_file", default=None, help="The deployment's conda file (its pip: list is installed).")
    parser.add_argument("--requirements", default=None, help="The deployment's requirements.txt.")
    parser.add_argument("--python", default=None, help="The Python to run the script with (an environment built "
                                                       "before), instead of one built from its environment file.")
    parser.add_argument("--strict", action="store_true", help="End when init() fails (an endpoint's replica).")
    args = parser.parse_args(argv)
    serve_entry_script(args.entry_script, args.model_dir, args.host, args.port, args.worker_count, args.strict,
                       conda_file=args.conda_file, requirements=args.requirements, python=args.python)


def serve_entry_script(entry_script: str, model_dir: str | None, host: str, port: int, workers: int = 1,
                       strict: bool = False, conda_file: str | None = None, requirements: str | None = None,
                       python: str | None = None) -> None:
    """Serve the script, run by `python`, else in the environment its deployment names (tasks/azure_env.py:
    a conda file or requirements.txt given, or beside the script), built once into a virtual environment
    of its packages alone. A failed init() is answered with its reason until fixed (as Azure's server
    does), or with `strict` (an endpoint's replica: no later request can fix it) ends the process."""
    from mlyard.core.settings import Settings
    from mlyard.serving.server import run_app
    from mlyard.tasks import azure_env
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()  # its environment (a replica's credential) stays its own: the script's processes cannot read it
    try:
        if python is None:
            env = azure_env.find(Path(entry_script), Path(conda_file) if conda_file else None,
                                 Path(requirements) if requirements else None)
            python = azure_env.python_for(env, Settings().envs_dir,
                                          log=lambda line: print(line, file=sys.stderr, flush=True))
        elif not os.access(python, os.X_OK):
            raise SpecError("--python", python, "an interpreter that exists (a virtual environment's bin/python)")
        script = EntryScript(entry_script, model_dir, python, workers)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if script.init_error and strict:
        print(f"error: {script.init_error}", file=sys.stderr)
        raise SystemExit(2)
    if script.init_error:
        print(f"warning: {script.init_error}; the server answers with this reason until it is fixed", file=sys.stderr)
    try:
        run_app(AzureApp(script, workers), host, port,
                on_ready=lambda url: print(f"serving {script.path.name} on {url}  (score: {url}/score)", flush=True))
    finally:
        script.close()


if __name__ == "__main__":
    main()
