"""The embedded Prefect server's one change (mlyard/prefect_server.py): on SQLite, a request that writes
takes the write lock when its transaction begins, so it waits for another writer instead of failing.

Real parts: a uvicorn server on a free port for the middleware; Prefect's own SQLite configuration on
a real database file for the transactions, with a second plain sqlite3 connection as the other writer.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlyard import prefect_server
from mlyard.prefect_server import WritesFirst, take_write_lock_first


def _echo(_request):
    return JSONResponse({"writes": prefect_server._WRITES.get()})


@pytest.fixture(scope="module")
def url():
    app = WritesFirst(Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST", "PATCH", "DELETE"])]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize(("method", "path", "writes"), [
    ("POST", "/api/flow_runs/", True),
    ("POST", "/api/flow_runs/abc/set_state", True),
    ("PATCH", "/api/flow_runs/abc", True),
    ("DELETE", "/api/flow_runs/abc", True),
    ("GET", "/api/flow_runs/abc", False),
    ("POST", "/api/flow_runs/filter", False),  # Prefect's reads that are POSTs
    ("POST", "/api/flow_runs/count", False),
    ("POST", "/api/flow_runs/paginate/", False),
    ("POST", "/api/flow_runs/history", False),
])
def test_which_requests_write(url, method, path, writes):
    assert httpx.request(method, url + path).json() == {"writes": writes}


def _other_writer_can_start(path) -> bool:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_a_writing_request_takes_the_lock_first(tmp_path):
    from prefect.server.database.configurations import AioSqliteConfiguration

    path = tmp_path / "prefect.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    take_write_lock_first()
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")

    async def held(writes: bool, with_for_update: bool = False) -> bool:
        engine = await config.engine()
        session = await config.session(engine)
        token = prefect_server._WRITES.set(writes)
        try:
            async with config.begin_transaction(session, with_for_update=with_for_update):
                await session.connection()  # the transaction has begun; nothing read or written yet
                return not await asyncio.to_thread(_other_writer_can_start, path)
        finally:
            prefect_server._WRITES.reset(token)
            await session.close()
            await engine.dispose()

    assert asyncio.run(held(writes=True)) is True  # IMMEDIATE: the lock is this request's from BEGIN
    assert asyncio.run(held(writes=False)) is False  # a reading request stays DEFERRED, as Prefect has it
    assert asyncio.run(held(writes=False, with_for_update=True)) is True  # Prefect's own IMMEDIATE is kept


def test_each_schema_is_checked_once_and_every_instance_every_time(monkeypatch):
    """The server's `jsonschema.validate` (prefect_server.check_each_schema_once) gives jsonschema's own
    answers: a bad instance and a bad schema are refused as before, a good schema is checked once."""
    import jsonschema
    from jsonschema import Draft202012Validator

    from mlyard import prefect_server

    monkeypatch.setattr(jsonschema, "validate", jsonschema.validate)  # put back after the test
    prefect_server.check_each_schema_once()
    checks = []
    real_check = Draft202012Validator.check_schema.__func__
    monkeypatch.setattr(Draft202012Validator, "check_schema",
                        classmethod(lambda cls, schema, **kw: checks.append(1) or real_check(cls, schema, **kw)))
    schema = {"type": "object", "properties": {"env": {"type": "object"}}, "required": ["env"]}
    for _ in range(3):
        jsonschema.validate({"env": {"A": "b"}}, schema, Draft202012Validator)
    assert len(checks) == 1
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'object'"):
        jsonschema.validate({"env": "text"}, schema, Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError, match="'env' is a required property"):
        jsonschema.validate({}, schema, Draft202012Validator)
    for _ in range(2):
        with pytest.raises(jsonschema.SchemaError):
            jsonschema.validate({}, {"type": "no-such-type"}, Draft202012Validator)
    assert len(checks) == 3, "a schema that failed its check is checked again"
