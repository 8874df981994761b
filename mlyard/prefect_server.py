"""The embedded Prefect server: Prefect's own app (UI, API, services), served as `prefect server start`
serves it, with one change: on SQLite, a request that writes waits its turn instead of failing.

    python -m mlyard.prefect_server --host 127.0.0.1 --port PORT

Prefect opens its SQLite transactions DEFERRED (IMMEDIATE only for `with_for_update`). A deferred
transaction that has read and then writes while another holds the write lock fails at once with
"database is locked" (SQLite cannot wait there without risking a deadlock, so the busy timeout does not
apply); the API answers 503 and Prefect's client retries after 2, 4, 8, 16 and 32 s. Four tuning
trials at a time as flow runs waited 15 to 30 s in those back-offs (issue 25). Here a request that
changes something (not the POSTs that only read: filter, count, paginate) opens its transactions
IMMEDIATE: it takes the write lock first and waits for it (busy timeout 60 s) rather than failing.
A 503 that still happens keeps Prefect's back-off. The server's own work outside a request (its services
and its event consumers: the automations' buckets, the events' writes) takes the write lock first too: it
mostly writes, and failed at once with "database is locked" while a team queued its runs (bench/team_load.py).
"""

from __future__ import annotations

import argparse
import gc
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, AsyncGenerator, Awaitable, Callable

READ_ONLY_SUFFIXES = ("/filter", "/count", "/paginate", "/history")  # POSTs that only read
_WRITES: ContextVar[bool] = ContextVar("mlyard_request_writes", default=True)  # outside a request: it writes

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class WritesFirst:
    """ASGI middleware: marks a request that changes something (see the module)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writes = (scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE")
                  and not scope["path"].rstrip("/").endswith(READ_ONLY_SUFFIXES))
        token = _WRITES.set(writes)
        try:
            await self.app(scope, receive, send)
        finally:
            _WRITES.reset(token)


def take_write_lock_first() -> None:
    """Make Prefect's SQLite transactions of a writing request BEGIN IMMEDIATE (see the module)."""
    from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration

    @asynccontextmanager
    async def begin_transaction(self, session, with_for_update: bool = False) -> AsyncGenerator[Any, None]:
        token = SQLITE_BEGIN_MODE.set("IMMEDIATE" if with_for_update or _WRITES.get() else "DEFERRED")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            SQLITE_BEGIN_MODE.reset(token)

    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


def check_each_schema_once(remembered: int = 256) -> None:
    """`jsonschema.validate` as Prefect's server calls it for the job variables of every flow run made from
    a deployment, with the schema's own check against its metaschema (nine tenths of the call's 13 ms)
    made once per distinct schema instead of at every call. Instances are validated every time, and a
    schema that fails its check is checked again at its next use."""
    import json

    import jsonschema
    from jsonschema import exceptions

    checked: dict[str, None] = {}  # insertion-ordered: the oldest is forgotten first

    def validate(instance: Any, schema: Any, cls: Any = None, *args: Any, **kwargs: Any) -> None:
        if cls is None:
            cls = jsonschema.validators.validator_for(schema)
        key = f"{cls.__module__}.{cls.__qualname__}:{json.dumps(schema, sort_keys=True, default=repr)}"
        if key not in checked:
            cls.check_schema(schema)
            checked[key] = None
            if len(checked) > remembered:
                del checked[next(iter(checked))]
        error = exceptions.best_match(cls(schema, *args, **kwargs).iter_errors(instance))
        if error is not None:
            raise error

    jsonschema.validate = validate


def readable_patterns() -> None:
    """A value that a schema's `pattern` refuses is told in the words the schema gives beside it
    (mlyard.core.specs.common.PATTERN_WORDS_KEY) rather than as the regular expression, in what Prefect's
    parameter check answers: the Run form's field messages and its toast ("'Bad Name' is not valid:
    lowercase letters, digits and '-' ..."). Other patterns keep jsonschema's message; a Prefect whose
    validator is built otherwise is left as it is."""
    from jsonschema import ValidationError
    from prefect.utilities.schema_tools import validation

    from mlyard.core.specs.common import PATTERN_WORDS_KEY

    validators = getattr(getattr(validation, "_VALIDATOR", None), "VALIDATORS", None)
    if not isinstance(validators, dict) or "pattern" not in validators:  # a Prefect without it: its own messages
        return
    plain = validators["pattern"]

    def pattern(validator: Any, patrn: str, instance: Any, schema: dict[str, Any]) -> Any:
        for error in plain(validator, patrn, instance, schema):
            words = schema.get(PATTERN_WORDS_KEY)
            yield ValidationError(f"{instance!r} is not valid: {words}") if words else error

    validators["pattern"] = pattern


def background_polls_every(seconds: float = 1.0) -> None:
    """Prefect's background-task worker (docket: the server's loop services, late runs, cancellation
    clean-up, ..., and the tasks its API hands off) looks for due work every 0.25 s, Prefect exposing no
    setting for it; it is most of what an idle embedded server costs (bench/README.md, twenty-second
    session). Every `seconds` instead: the loop services run every 5 s or slower, so each still runs on
    time to within that. Left as it is if docket's worker no longer takes these arguments."""
    import inspect
    from datetime import timedelta
    from functools import partial

    from prefect.server.api import background_workers

    worker = background_workers.Worker
    if {"minimum_check_interval", "scheduling_resolution"} <= set(inspect.signature(worker).parameters):
        every = timedelta(seconds=seconds)
        background_workers.Worker = partial(worker, minimum_check_interval=every,  # type: ignore[misc]
                                            scheduling_resolution=every)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlyard.prefect_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()  # it holds the Prefect auth string and its database's URL

    import prefect
    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import PREFECT_SERVER_API_KEEPALIVE_TIMEOUT, PREFECT_SERVER_LOGGING_LEVEL

    take_write_lock_first()
    check_each_schema_once()
    readable_patterns()
    background_polls_every(1.0)
    app = create_app(final=True)
    app.add_middleware(WritesFirst)
    # Prefect's modules, settings and app (about 400,000 objects) live as long as the server: out of the
    # collector's full passes, which otherwise scanned them all: 0.2 s of CPU each, a pause for the
    # requests in flight, every 40 s or so under the tests' load
    gc.freeze()
    print(f"Prefect server (mlyard) on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app=app, app_dir=str(prefect.__module_path__.parent), host=args.host, port=args.port,
                timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
                log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower())


if __name__ == "__main__":
    main()
