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

`python -m serving.azure --entry_script score.py [--model_dir DIR] [--port 5001] [--worker_count N]`
takes azmlinfsrv's flags; `mlyard serve --entry-script score.py` does the same. The script runs in the
environment its deployment names: a conda file or requirements.txt (serving/azure_env.py).
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

from core.environment import flag
from core.errors import BadInput, SpecError
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
        self.schema: tuple[dict, dict, list[str]] | None = None  # input, output schemas, swagger versions
        self.required: list[str] = []  # run()'s arguments without a default
        self.accepted: set[str] | None = None  # the arguments it takes (None: any, it has **kwargs)
        try:
            spec = importlib.util.spec_from_file_location(self.path.stem, self.path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(self.path.parent))
            spec.loader.exec_module(module)
            if not callable(getattr(module, "run", None)):
                raise SpecError("entry_script", str(path), "a script that defines run()")
            self.module = module
            self.schema = _schema(module.run)
            self.required, self.accepted = _arguments(module.run)
            if callable(getattr(module, "init", None)):
                module.init()
        except SpecError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the server stays up and says why
            self.init_error = f"init() failed: {where(exc, self.path)}"

    def call(self, body: bytes) -> Any:
        run = self.module.run
        if self.schema is not None and self.schema[0]:  # inference-schema: the body's fields as arguments
            try:
                doc = orjson.loads(body) if body else {}
            except orjson.JSONDecodeError as exc:
                raise BadInput(f"the body is not valid JSON ({exc}); send a JSON object of run()'s inputs") from None
            if not isinstance(doc, dict):
                raise BadInput("the body must be a JSON object of run()'s inputs, e.g. {\"data\": [[1, 2]]}")
            declared = list(self.schema[0].get("properties", {}))
            missing = [n for n in self.required if n not in doc]
            if missing:
                raise BadInput(f"the body lacks {missing[0]!r}; run() takes {', '.join(declared)}")
            unknown = [n for n in doc if n not in self.accepted] if self.accepted is not None else []
            if unknown:
                raise BadInput(f"run() takes no {unknown[0]!r}; it takes {', '.join(declared)}")
            try:
                return run(**doc)
            except Exception as exc:
                frames = traceback.extract_tb(exc.__traceback__)
                if frames and f"{os.sep}inference_schema{os.sep}" in frames[-1].filename:  # the decorators refused it
                    raise BadInput(f"the body does not fit run()'s declared inputs: {type(exc).__name__}: {exc}") from None
                raise
        try:
            raw: Any = body.decode("utf-8")
        except UnicodeDecodeError:
            raw = body
        return run(raw)




def _schema(run: Any) -> tuple[dict, dict, list[str]] | None:
    """(input schema, output schema, swagger versions) of a run() with inference-schema decorators."""
    if importlib.util.find_spec("inference_schema") is None:
        return None
    from inference_schema import schema_util

    if not schema_util.is_schema_decorated(run):
        return None
    return (schema_util.get_input_schema(run) or {}, schema_util.get_output_schema(run) or {},
            [str(v) for v in schema_util.get_supported_versions(run)])


def _arguments(run: Any) -> tuple[list[str], set[str] | None]:
    import inspect

    try:
        params = inspect.signature(inspect.unwrap(run)).parameters.values()
    except (TypeError, ValueError):
        return [], None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return [p.name for p in params if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD], None
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in named if p.default is p.empty], {p.name for p in named}


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
        try:
            out = await loop.run_in_executor(self.pool, script.call, body)
        except BadInput as exc:
            return 400, _error(str(exc)), b"application/json"
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
    parser.add_argument("--conda_file", default=None, help="The deployment's conda file (its pip: list is installed).")
    parser.add_argument("--requirements", default=None, help="The deployment's requirements.txt.")
    parser.add_argument("--strict", action="store_true", help="End when init() fails (an endpoint's replica).")
    args = parser.parse_args(argv)
    serve_entry_script(args.entry_script, args.model_dir, args.host, args.port, args.worker_count, args.strict,
                       conda_file=args.conda_file, requirements=args.requirements)


def serve_entry_script(entry_script: str, model_dir: str | None, host: str, port: int, workers: int = 1,
                       strict: bool = False, conda_file: str | None = None, requirements: str | None = None) -> None:
    """Serve the script, in the environment its deployment names (serving/azure_env.py: a conda file or
    requirements.txt given, or beside the script). A failed init() is answered with its reason until
    fixed (as Azure's server does), or with `strict` (an endpoint's replica: no later request can fix
    it) ends the process."""
    from serving import azure_env
    from serving.server import run_app

    if not flag(azure_env.REEXEC_ENV):
        try:
            env = azure_env.find(Path(entry_script), Path(conda_file) if conda_file else None,
                                 Path(requirements) if requirements else None)
            python = _environment_python(env)
        except SpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if python != sys.executable:
            azure_env.run_in(python, ["--entry_script", entry_script, "--port", str(port), "--worker_count",
                                      str(workers), "--host", host, *(["--model_dir", model_dir] if model_dir else []),
                                      *(["--strict"] if strict else [])])
    try:
        script = EntryScript(entry_script, model_dir)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if script.init_error and strict:
        print(f"error: {script.init_error}", file=sys.stderr)
        raise SystemExit(2)
    if script.init_error:
        print(f"warning: {script.init_error}; the server answers with this reason until it is fixed", file=sys.stderr)
    run_app(AzureApp(script, workers), host, port,
            on_ready=lambda url: print(f"serving {script.path.name} on {url}  (score: {url}/score)", flush=True))


def _environment_python(env) -> str:
    """The deployment's environment built (or found in the cache); its python."""
    from core.errors import TrainingFailed
    from core.settings import Settings
    from serving import azure_env

    try:
        return azure_env.python_for(env, Settings().envs_dir, log=lambda line: print(line, file=sys.stderr, flush=True))
    except TrainingFailed as exc:  # pip could not install it: the reason, in one line
        raise SpecError(env.source.name if env.source else "environment", "its packages",
                        f"packages pip can install ({exc.reason}: {exc.last_lines[-1] if exc.last_lines else ''})") from None


if __name__ == "__main__":
    main()
