"""Users' API keys and projects' rate limits at the gateway, on real sockets: the gateway's own app behind
the real fastserver (its routing table and its view of the catalog's keys set by hand, as a refresh sets
them), as in test_gateway_abuse.py. A key passes to its user's projects' endpoints only, on its headers;
over a project's limits the answer is 429 with Retry-After, before any body is read."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from mlyard.core.access import new_key
from mlyard.serving import fastserver
from mlyard.serving.gateway import Gateway
from tests.serving.test_gateway_abuse import INTERNAL, Running


def _keys(*users: tuple[str, bool, frozenset]) -> tuple[dict, dict]:
    made, keys = {}, {}
    for name, _admin, _projects in users:
        key_id, key, kept = new_key()
        made[name], keys[key_id] = key, (kept, name, time.time() + 3600)
    return made, keys


@pytest.fixture()
def gateway(tmp_path: Path):
    gw = Gateway(tmp_path, None, internal_token=INTERNAL, max_body=1024 * 1024)

    async def kept() -> None:  # the table below is the catalog's read: a request for a stage that serves nothing
        pass                   # reads it again (Gateway._recheck), which would find no catalog here

    gw.refresh = kept  # type: ignore[method-assign]
    gw.shared.loaded = True
    gw.shared.endpoints = {"vision": {"public": False, "project": "team-a", "default": "default",
                                      "max_request_bytes": None, "stages": {"default": {"status": "STOPPED"}},
                                      "tokens": {}}}
    users = (("alice", False, frozenset({"team-a"})), ("bob", False, frozenset({"team-b"})),
             ("root", True, frozenset()))
    made, keys = _keys(*users)
    gw.shared.members = {"keys": keys, "users": {n: (a, p) for n, a, p in users}, "limits": {}}
    running = Running(gw, fastserver.Limits(max_head_bytes=8 * 1024, head_seconds=2, body_seconds=2,
                                            idle_seconds=2, max_connections=16))
    running.gw, running.keys = gw, made
    yield running
    running.stop()


def _call(port: int, auth: str | None, body: bytes = b"{}") -> tuple[int, dict[str, str]]:
    head = f"POST /vision/default/v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    if auth:
        head += f"Authorization: Bearer {auth}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    lines = raw.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers


def test_a_key_passes_to_its_projects_endpoints_only(gateway):
    keys = gateway.keys
    # past the key check, the stage serves nothing: 503, not 401
    assert _call(gateway.port, keys["alice"])[0] == 503
    assert _call(gateway.port, keys["root"])[0] == 503  # an admin's key
    assert _call(gateway.port, keys["bob"])[0] == 401  # no role in team-a
    assert _call(gateway.port, keys["alice"][:-1] + ("A" if keys["alice"][-1] != "A" else "B"))[0] == 401
    assert _call(gateway.port, None)[0] == 401
    gateway.gw.shared.members = {**gateway.gw.shared.members, "keys": {}}  # revoked: the next catalog read
    gateway.gw.shared.endpoints["vision"].pop("passed", None)  # a refresh brings a new table, without it
    assert _call(gateway.port, keys["alice"])[0] == 401


def test_over_a_projects_rate_limits_the_answer_is_429_with_retry_after(gateway):
    keys = gateway.keys
    gateway.gw.shared.members["limits"] = {"team-a": (None, 2.0)}  # 2 a second per caller
    statuses = [_call(gateway.port, keys["alice"])[0] for _ in range(3)]
    assert statuses[:2] == [503, 503] and statuses[2] == 429
    status, headers = _call(gateway.port, keys["root"])  # another caller has its own
    assert status == 503
    status, headers = _call(gateway.port, keys["alice"])
    assert status == 429 and int(headers["retry-after"]) >= 1
    time.sleep(1.1)
    assert _call(gateway.port, keys["alice"])[0] == 503

    gateway.gw.shared.members["limits"] = {"team-a": (3.0, None)}  # 3 a second for all callers together
    time.sleep(1.1)
    statuses = [_call(gateway.port, keys[n])[0] for n in ("alice", "root", "alice", "root")]
    assert statuses == [503, 503, 503, 429]
    # a refused caller (no key) is not counted against the project's callers
    gateway.gw.shared.members["limits"] = {"team-a": (1.0, None)}
    time.sleep(1.1)
    assert [_call(gateway.port, None)[0] for _ in range(5)] == [401] * 5
    assert _call(gateway.port, keys["alice"])[0] == 503


def test_a_projects_rag_takes_its_members_keys_and_reads_no_body_before_a_credential(gateway):
    """The RAG routes name the RAG in the body: a caller whom no RAG would take is answered 401 on the
    headers, so a body it claims is never waited for; a member of the RAG's project passes."""
    keys = gateway.keys
    gateway.gw.shared.endpoints["rag:handbook"] = {"public": False, "project": "team-a", "default": "query",
                                                   "max_request_bytes": None, "tokens": {},
                                                   "stages": {"query": {"status": "STOPPED"}}}

    def ask(auth: str | None, length: int | None = None) -> int:
        body = b'{"model": "handbook", "query": "backups"}'
        head = f"POST /rag/v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: {length or len(body)}\r\n"
        head += f"Authorization: Bearer {auth}\r\n" if auth else ""
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
            s.sendall(head.encode() + b"Connection: close\r\n\r\n" + (b"" if length else body))
            return int(s.recv(65536).split(b" ", 2)[1])

    assert ask(None, length=500_000) == 401 and ask(keys["bob"], length=500_000) == 401  # its body not waited for
    assert ask(keys["alice"]) == 503 and ask(keys["root"]) == 503  # past the check: the query service is away
    assert ask(keys["bob"]) == 401
