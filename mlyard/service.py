"""The mlyard API: a warm process that `mlyard up` starts beside the Prefect server and the worker.

It answers the queries of mlyard/queries.py with Prefect's client, MLflow and the catalog already imported and
connected, so a CLI command pays for none of that, reading only what the CLI would read itself. It writes the
flow run a command queues (mlyard/submit.py) with Prefect's own `run_deployment`, as the command would (after
the command's checks), and, for a CLI that names this API with MLYARD_API_URL (a workstation reaching a
cluster's platform), the catalog writes of mlyard/commands.py.

    POST /v1/queries/{name}   JSON body: the query's arguments -> its JSON answer
    POST /v1/commands/{name}  JSON body: a catalog write's arguments (mlyard/commands.py: images, registry
                              accounts, templates) -> its JSON answer
    POST /v1/runs             {"deployment", "parameters", "tags", "job_variables", "idempotency_key"} -> {"id", "name"}
    PUT  /v1/uploads/{digest}/{name}  a tar of a member's local folder -> {"uri"} under their project's prefix
                              an error: {"error": {"type", "message", "status"}} with that HTTP status
    GET  /dashboard?key=K     the dashboard page (mlyard/dashboard.py); K is its own read-only key
                              (`mlyard status` prints the link), since a browser sends no header
    GET  /health              {"status": "ok"} once warm
    GET  /metrics[/prefect]   Prometheus text (mlyard/platform_metrics.py); the scrape credential reads these alone
    GET  /docs                the OpenAPI page

Every route but /health needs a credential on its headers, checked before the body is read (SignedIn;
a JSON body then says its length, at most MAX_BODY_BYTES):
the platform's internal one (`Authorization: Bearer ...`, from stack.json, mode 0600), which acts as the
stack's owner, an admin; or a team member's API key (`Bearer mly_...`, mlyard/teams.py), which acts as
that user within their projects (`X-Mlyard-Project` chooses one); or, for the metrics alone, the scrape
credential derived from the internal one. Anyone else gets 401.

It keeps the index of the structured log records caught up (mlyard/logs.py), every 2 s, and deletes
the records past their retention (Settings.log_retention_days) every hour.

It also follows Prefect's events: a flow run that CRASHED (its process killed) gets its MLflow runs
ended FAILED with the reason (mlyard/crashes.py); on a cluster only the replica holding the Lease does.

And it holds the front door to the Prefect UI for project members, on a second port (Settings.door_port:
mlyard/prefect_door.py). Run by the stack as `python -m mlyard.service --port N` (loopback only).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Request  # module-level: FastAPI reads the routes' annotations here (the docs)
from fastapi.responses import JSONResponse, Response

from mlyard import platform_metrics
from mlyard.measured import Measured
from mlyard.platform_metrics import METRICS
from mlyard.queries import QUERIES
from mlyard.warm import code_fingerprint, loaded_project_files
from mlyard.warm_api import error_body

log = logging.getLogger("mlyard.service")


class SignedIn:
    """ASGI middleware: who asks, from the headers alone, before any body is read, for every route but
    /health:
    - the platform's internal credential: the platform itself (the stack owner's commands, the cluster's
      services), an admin;
    - a user's API key (`mly_...`): that user with their roles, read from the catalog on every request, so a
      revoked key stops at once; a member (not an admin) reaches only the queries and commands that answer
      within their projects (mlyard/queries.py MEMBER_QUERIES, mlyard/commands.py MEMBER_COMMANDS) and runs;
    - a read-only page (the dashboard, the docs) opened with the page key, for the stack's owner.
    Anything else is 401. The project a call acts in comes in `X-Mlyard-Project`; the actor is what
    mlyard/teams.py, mlyard/runs.py and the commands check (core/access.current)."""

    def __init__(self, app: Any, token: str | None):
        from mlyard.core.connection import dashboard_key

        self.app, self._expected = app, f"Bearer {token}".encode() if token else None
        self._page_key = f"key={dashboard_key(token)}".encode() if token else None

    def _page(self, scope: dict) -> bool:
        """A read-only page opened in a browser (which sends no Authorization header): GET /dashboard, or the
        API's own docs (/docs and the /openapi.json it loads), with the page key in the query or, once the
        docs were opened with it, in the cookie they set."""
        import hmac

        if scope["method"] != "GET" or self._page_key is None or scope["path"] not in PAGES:
            return False
        given = scope["query_string"].split(b"&")
        if scope["path"] != "/dashboard":  # the docs' own requests carry the key as a cookie
            given += [c.strip() for k, v in scope["headers"] if k == b"cookie" for c in v.split(b";")]
        return any(hmac.compare_digest(part.replace(COOKIE + b"=", b"key=", 1), self._page_key) for part in given)

    async def _actor(self, scope: dict):
        """Who the headers say asks (None: nobody we know)."""
        from mlyard.core.access import local_owner
        from mlyard.serving.access import is_internal

        headers = dict(scope["headers"])
        project = headers.get(b"x-mlyard-project", b"").decode("latin-1").strip() or None
        source = (scope.get("client") or ("", 0))[0] or "unknown"
        if self._page(scope) or is_internal(self._expected, scope["headers"]):
            from dataclasses import replace

            return replace(local_owner(project), source=source)
        auth = headers.get(b"authorization", b"")
        if not auth.startswith(b"Bearer mly_"):
            return None
        import anyio

        from mlyard.teams import teams

        key = auth[len(b"Bearer "):].decode("latin-1")
        return await anyio.to_thread.run_sync(lambda: teams().authenticate(key, source, project))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        if scope["path"] in METRICS and scope["method"] == "GET":  # the scrape credential reads these, and only these
            from mlyard.serving.access import is_scrape

            if is_scrape(self._expected, scope["headers"]):
                return await self.app(scope, receive, send)
        from mlyard.core.access import acting_as, done_acting
        from mlyard.core.errors import Forbidden, MlyardError, Unauthenticated

        try:
            actor = await self._actor(scope)
            if actor is None:
                raise Unauthenticated(
                    "the mlyard API answers signed-in callers only: a user's API key (MLYARD_API_KEY, `mlyard login`) or "
                    "the platform's internal credential (stack.json's on one machine, MLYARD_INTERNAL_TOKEN elsewhere), "
                    "as a bearer token; its docs open at /docs?key=... as `mlyard status` prints")
            if not actor.admin and not _member_route(scope):
                raise Forbidden(actor.name, None, f"{scope['method']} {scope['path']} (not yet open to project "
                                "members' keys)", "admin", None)
            _bounded(scope)
        except MlyardError as exc:
            return await _refuse(send, exc)
        token = acting_as(actor)
        try:
            await self._pass(scope, receive, send)
        finally:
            done_acting(token)

    async def _pass(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["path"] == "/docs" and self._page_key is not None:
            key = self._page_key.split(b"=", 1)[1]

            async def with_cookie(message: dict) -> None:  # the docs then load /openapi.json with it
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (
                        b"set-cookie", COOKIE + b"=" + key + b"; Path=/; HttpOnly; SameSite=Strict")]}
                await send(message)

            return await self.app(scope, receive, with_cookie)
        await self.app(scope, receive, send)


def _member_route(scope: dict) -> bool:
    """A route a team member's key may take (the rest are the platform's and its admins')."""
    from mlyard.commands import MEMBER_COMMANDS
    from mlyard.queries import MEMBER_QUERIES

    path = scope["path"]
    if scope["method"] == "PUT" and path.startswith("/v1/uploads/"):
        return True
    if scope["method"] != "POST":
        return False
    if path == "/v1/runs":
        return True
    for prefix, allowed in (("/v1/queries/", MEMBER_QUERIES), ("/v1/commands/", MEMBER_COMMANDS)):
        if path.startswith(prefix):
            return path[len(prefix):] in allowed
    return False


def _bounded(scope: dict) -> None:
    """A query's, a command's or a run's JSON body says its length, at most MAX_BODY_BYTES (an upload has
    its own bound): refused on the headers, before a byte of it is read."""
    from mlyard.core.errors import BodyTooLarge, HttpError

    if scope["method"] != "POST":
        return
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if not declared.isdigit():
        raise HttpError(411, "a request body says its length (Content-Length)")
    if int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(MAX_BODY_BYTES)


async def _refuse(send: Any, exc: Any) -> None:
    body = json.dumps(error_body(exc)).encode()
    await send({"type": "http.response.start", "status": exc.http_status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


PAGES = ("/dashboard", "/docs", "/openapi.json")
MAX_UPLOAD_BYTES = 4 << 30  # a member's folder uploaded to their project (PUT /v1/uploads)
MAX_BODY_BYTES = 32 << 20  # a query's, command's or run's JSON (a pipeline's YAML, the largest, is 10 MiB at most)
UPLOADS_AT_ONCE = 4  # a user's uploads being received at once: more wait their turn (429), others are not held up
COOKIE = b"mlyard_page_key"


def create_app(token: str | None = None):
    from fastapi import Body, FastAPI
    from prometheus_client import CollectorRegistry, ProcessCollector

    app = FastAPI(title="mlyard API", description=__doc__, version="0.1.0")
    registry = CollectorRegistry()  # this app's own: two apps in one process never share counts
    ProcessCollector(registry=registry)
    app.add_middleware(Measured, registry=registry, prefix="mlyard_api", server="the mlyard API")
    app.add_middleware(SignedIn, token=token)  # the outer one: a refused request is not measured

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    platform_metrics.install(app, registry)  # /metrics and /metrics/prefect

    @app.post("/v1/queries/{name}")
    def query(name: str, arguments: dict[str, Any] = Body(default_factory=dict)) -> Response:  # noqa: B008
        fn = QUERIES.get(name)
        if fn is None:
            return JSONResponse(error_body(_unknown(name)), status_code=400)
        return _answer(fn, arguments, f"query {name}")

    @app.post("/v1/commands/{name}")
    def command(name: str, arguments: dict[str, Any] = Body(default_factory=dict)) -> Response:  # noqa: B008
        from mlyard.commands import COMMANDS

        fn = COMMANDS.get(name)
        if fn is None:
            return JSONResponse(error_body(_unknown(name, COMMANDS, "command")), status_code=400)
        return _answer(fn, arguments, f"command {name}")

    @app.get("/dashboard")
    def dashboard(since: str = "24h") -> Response:
        """The dashboard page (mlyard/dashboard.py): server-rendered, read-only."""
        from fastapi.responses import HTMLResponse

        from mlyard import dashboard as board

        try:
            data = board.collect(since)
        except Exception as exc:  # noqa: BLE001 - a bad period, or an engine away: say which, as a page
            return HTMLResponse(f"<!doctype html><title>mlyard dashboard</title><p>{html.escape(str(exc))}</p>",
                                status_code=error_body(exc)["error"]["status"])
        return HTMLResponse(board.page(data))

    @app.post("/v1/runs")
    def runs(request: Request, run: dict[str, Any] = Body(...)) -> Response:  # noqa: B008
        from mlyard.submit import create_run

        key = request.headers.get("idempotency-key")  # the header as HTTP APIs name it, or the field
        return _answer(create_run, {**run, "idempotency_key": key} if key and "idempotency_key" not in run else run, "run")

    app.put("/v1/uploads/{digest}/{name}")(upload)
    return app


uploading: dict[str, int] = {}  # the user's uploads being received now (one event loop: no lock)

async def upload(digest: str, name: str, request: Request) -> Response:
    """A tar of a local folder or file `name` (its content digest `digest`), unpacked into the caller's
    project prefix (mlyard/project_storage.py): {"uri"}. At most MAX_UPLOAD_BYTES, and UPLOADS_AT_ONCE of
    a user's at a time."""
    from mlyard.core.access import current
    from mlyard.core.errors import BodyTooLarge, HttpError

    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > MAX_UPLOAD_BYTES:  # said by the headers: no byte read
        return JSONResponse(error_body(BodyTooLarge(MAX_UPLOAD_BYTES)), status_code=413)
    user = current().name
    if uploading.get(user, 0) >= UPLOADS_AT_ONCE:
        return JSONResponse(error_body(HttpError(429, f"{user} has {UPLOADS_AT_ONCE} uploads being received "
                                                 "already: send the next when one has finished")), status_code=429)
    uploading[user] = uploading.get(user, 0) + 1
    try:
        return await _received(digest, name, request, int(declared))
    finally:
        uploading[user] -= 1

async def _received(digest: str, name: str, request: Request, declared: int) -> Response:
    from starlette.concurrency import run_in_threadpool

    from mlyard.core.environment import home
    from mlyard.core.errors import BodyTooLarge
    from mlyard.project_storage import receive, upload_scratch
    from mlyard.teams import audited

    with tempfile.NamedTemporaryFile(dir=upload_scratch(home()), prefix=f"body.pid{os.getpid()}.", suffix=".tar") as body:
        got = 0
        async for chunk in request.stream():
            got += len(chunk)
            if got > declared:  # longer than it said
                return JSONResponse(error_body(BodyTooLarge(declared)), status_code=413)
            body.write(chunk)
        body.flush()
        receipt = audited("upload.create", lambda a: f"upload {a['digest']}/{a['name']}",
                          lambda a: None)(lambda **a: receive(Path(body.name), **a))
        return await run_in_threadpool(_answer, receipt, {"digest": digest, "name": name}, "upload")


def _answer(fn, arguments: dict[str, Any], what: str) -> Response:
    try:
        answer = fn(**arguments)
    except TypeError as exc:  # arguments that do not fit
        return JSONResponse(error_body(_bad_arguments(what, exc)), status_code=400)
    except Exception as exc:  # noqa: BLE001 - every error goes back to the caller, as the same class
        body = error_body(exc)
        if body["error"]["status"] >= 500:
            log.exception("%s failed", what)
        return JSONResponse(body, status_code=body["error"]["status"])
    return Response(json.dumps(answer, default=str), media_type="application/json")


def _unknown(name: str, known: dict[str, Any] = QUERIES, what: str = "query"):
    from mlyard.core.errors import SpecError

    return SpecError(what, name, f"one of {', '.join(sorted(known))}")


def _bad_arguments(what: str, exc: TypeError):
    from mlyard.core.errors import SpecError

    return SpecError(what, str(exc), "its own arguments (see mlyard/queries.py, mlyard/commands.py and mlyard/submit.py)")


def warm_up() -> None:
    """Import and connect everything a query touches, so the first CLI command is as fast as the rest."""
    from mlyard import queries

    queries.trainings_list(limit=1)
    queries.experiments_list()
    queries.models_list()
    queries.templates_list()
    import prefect.deployments  # noqa: F401 - for the first run a command queues (POST /v1/runs)


def _restart_on_change(files: list[str], fingerprint: str, every_seconds: float = 2.0) -> None:
    """The project's code changed since this process imported it: start again (same pid, same port),
    so that no answer comes from stale code."""
    while True:
        time.sleep(every_seconds)
        if code_fingerprint(files) != fingerprint:
            log.info("the project's code changed: restarting")
            logging.shutdown()
            os.execv(sys.executable, [sys.executable, "-m", "mlyard.service", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m mlyard.service", description="The mlyard API (see its docstring).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    from mlyard.core.errors import StackError
    from mlyard.core.settings import Settings, require_shared_stores
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()  # it holds the internal token and the Prefect auth string: forked or not, kept to itself
    try:
        require_shared_stores(Settings())
    except StackError as exc:
        raise SystemExit(f"mlyard API: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("mlflow.store.db.utils", "alembic", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        warm_up()
    except Exception:  # noqa: BLE001 - warming is a head start, not a condition: the first query pays instead
        log.exception("could not warm up (Prefect, MLflow or the catalog did not answer); answering anyway")
    from mlyard import crashes
    from mlyard.warm_api import platform
    settings = Settings()  # a crashed flow run's MLflow runs end FAILED; on a cluster, by the Lease's holder
    crashes.follow(platform().tracking, settings.catalog_db_url, settings.lease, settings.kube_namespace)
    from mlyard import door_server, logs
    threading.Thread(target=logs.keep_indexed, name="mlyard-logs-index", daemon=True).start()
    from mlyard.core.connection import internal_token
    door = settings.door_port or settings.prefect_port + 3  # the front door to the Prefect UI, a listener of its own
    threading.Thread(target=door_server.serve, args=(args.host, door, internal_token(settings)),
                     name="mlyard-prefect-door", daemon=True).start()
    files = loaded_project_files()  # the door's modules among them
    threading.Thread(target=_restart_on_change, args=(files, code_fingerprint(files)), name="mlyard-code-watch",
                     daemon=True).start()
    from mlyard.stack import keep_keeper  # the keeper restarts this API when it dies; this API, the keeper
    threading.Thread(target=keep_keeper, args=(settings,), name="mlyard-keeper-watch", daemon=True).start()
    log.info("warm; answering on http://%s:%d (the Prefect UI's front door on %d)", args.host, args.port, door)
    # SIGTERM ends the API's own server first, then the door drains (mlyard/door_server.py)
    door_server.run_then_drain(lambda: uvicorn.run(create_app(internal_token(settings)), host=args.host,
                                                   port=args.port, log_level="warning", access_log=False))


if __name__ == "__main__":
    main()
