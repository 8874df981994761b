"""The gateway's front under abuse, on real sockets: the gateway's own app (serving/gateway.py, its
routing table set by hand: no catalog or replica is needed to refuse) behind the real fastserver, in a
thread of this process, on a free port. Limits are shortened where a test would otherwise wait for the
defaults (10 s for a head, 5 s idle); `test_endpoint.py` runs the gateway as `mlyard up` starts it.

And a fuzz test (hypothesis) of the request parsing: whatever bytes come, the answer is a well-formed
HTTP response that is not 500, or the connection is closed; the server stays up.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlyard.serving import fastserver, listener
from mlyard.serving.gateway import Gateway

TOKEN = "myd_the-right-token"
INTERNAL = "internal-credential"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A fastserver with the gateway's app in a thread; `.port`, `.stop()`."""

    def __init__(self, app, limits: fastserver.Limits):
        self.port = _free_port()
        self.server = listener.Server(app, "127.0.0.1", self.port, limits)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.stopped = self.loop.create_future()

        async def main() -> None:
            srv = await self.loop.create_server(lambda: fastserver.Connection(self.server.app, self.server),
                                                "127.0.0.1", self.port)
            ready.set()
            await self.stopped
            srv.close()

        self.loop.run_until_complete(main())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopped.set_result, None)
        self.thread.join(10)


@pytest.fixture()
def gateway(tmp_path: Path):
    gw = Gateway(tmp_path, None, internal_token=INTERNAL, max_body=1024 * 1024)
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    gw.shared.loaded = True  # its table set by hand, as a refresh would
    gw.shared.endpoints = {"priv": {"public": False, "default": "default", "max_request_bytes": 4096,
                             "stages": {"default": {"status": "ACTIVE"}},
                             "tokens": {digest: (time.time() + 3600, False, "token:1")}},
                    "open": {"public": True, "default": "default", "max_request_bytes": None,
                             "stages": {"default": {"status": "ACTIVE"}}, "tokens": {}}}
    running = Running(gw, fastserver.Limits(max_head_bytes=8 * 1024, head_seconds=0.5, body_seconds=0.5,
                                            idle_seconds=0.5, max_connections=8))
    yield running
    running.stop()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def _answer(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 5 s pass)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_no_token_is_refused_on_the_head_before_the_body_is_sent(gateway):
    s = _connect(gateway.port)
    s.sendall(b"POST /priv/m/v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: 62914560\r\n\r\n")  # 60 MiB announced; not one byte of it is sent
    t0 = time.monotonic()
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"needs a token" in head and b"www-authenticate: Bearer" in head
    assert time.monotonic() - t0 < 1.0
    s.sendall(b"x" * 1024 * 1024)  # the client keeps sending: read and dropped (lingering close), then closed
    s.close()


def test_a_valid_token_over_the_endpoints_limit_is_413_before_the_body(gateway):
    s = _connect(gateway.port)
    s.sendall(b"POST /priv/m/v2/models/m/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + TOKEN.encode()
              + b"\r\ncontent-length: 5000\r\n\r\n")
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 ") and b"limit of 4096 bytes" in head, head
    s.close()
    # a chunked body (no length announced) is cut as soon as it passes the limit, not at its end
    s = _connect(gateway.port)
    s.sendall(b"POST /priv/m/v2/models/m/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + TOKEN.encode()
              + b"\r\ntransfer-encoding: chunked\r\n\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n" + b"10\r\n" + b"y" * 16
              + b"\r\n")
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 "), head
    s.close()


def test_headers_over_the_limit_are_431_and_an_unknown_route_404_without_reading_the_body(gateway):
    s = _connect(gateway.port)
    s.sendall(b"GET /priv/m/v2/models/m HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 64 * 1024)  # never ends
    assert _answer(s).startswith(b"HTTP/1.1 431 ")
    s = _connect(gateway.port)
    s.sendall(b"POST /nowhere/m/v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 62914560\r\n\r\n")
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 404 ") and b"no endpoint 'nowhere'" in head, head


def test_management_routes_need_the_internal_credential(gateway):
    for path in (b"/mlyard/routes", b"/mlyard/stats", b"/mlyard/metrics"):
        s = _connect(gateway.port)
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
        assert _answer(s).startswith(b"HTTP/1.1 401 "), path
    s = _connect(gateway.port)
    s.sendall(b"GET /mlyard/routes HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + INTERNAL.encode()
              + b"\r\nconnection: close\r\n\r\n")
    answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"endpoints"' in answer
    s = _connect(gateway.port)
    s.sendall(b"GET /mlyard/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")  # open to anyone
    assert _answer(s).startswith(b"HTTP/1.1 200 ")


def test_slow_heads_and_bodies_get_408_and_idle_connections_are_closed(gateway):
    s = _connect(gateway.port)
    s.sendall(b"GET /mlyard/health HTTP/1.1\r\nhost")  # a head that never ends (slowloris)
    t0 = time.monotonic()
    assert _answer(s).startswith(b"HTTP/1.1 408 ") and time.monotonic() - t0 < 3
    s = _connect(gateway.port)
    s.sendall(b"POST /open/m/v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")  # a body short
    assert _answer(s).startswith(b"HTTP/1.1 408 ")
    s = _connect(gateway.port)
    s.sendall(b"GET /mlyard/health HTTP/1.1\r\nhost: x\r\n\r\n")  # kept alive, then nothing more
    t0 = time.monotonic()
    answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1 and time.monotonic() - t0 < 3


def test_connections_are_bounded_and_pipelined_requests_answered_in_order(gateway):
    held = [_connect(gateway.port) for _ in range(8)]
    time.sleep(0.1)
    extra = _connect(gateway.port)
    assert _answer(extra).startswith(b"HTTP/1.1 503 ")
    for s in held:
        s.close()
    time.sleep(0.2)
    s = _connect(gateway.port)
    s.sendall(b"GET /mlyard/health HTTP/1.1\r\nhost: x\r\n\r\nGET /mlyard/nope HTTP/1.1\r\nhost: x\r\n\r\n"
              b"GET /mlyard/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    answer = _answer(s)
    assert re.findall(rb"HTTP/1.1 (\d{3}) ", answer) == [b"200", b"401"]  # a refused request ends its connection: the third is never read


methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"G\x00T", b""])
paths = st.one_of(st.sampled_from([b"/priv/m/v2/models/m/infer", b"/open/m/v1/models/m:predict", b"/mlyard/routes",
                                   b"/mlyard/health", b"/rag/v1/query", b"/open/stages/x/m/v2/models", b"//",
                                   b"/open/m/openai/v1/chat/completions", b"/%00", b"*"]),
                  st.binary(max_size=40).map(lambda b: b"/" + b.replace(b" ", b"")))
header_lines = st.lists(st.tuples(st.sampled_from([b"authorization", b"content-length", b"transfer-encoding",
                                                   b"x-nhn-apikey", b"expect", b"host", b"x-\xff"]),
                                  st.one_of(st.sampled_from([b"Bearer " + TOKEN.encode(), b"-1", b"99999999999999999999",
                                                             b"chunked", b"100-continue", b"0"]),
                                            st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))),
                        max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, path=paths, headers=header_lines, body=st.binary(max_size=200))
def test_fuzzed_requests_get_an_answer_that_is_not_500_and_the_server_stays_up(gateway, method, path, headers, body):
    raw = method + b" " + path + b" HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) \
        + b"connection: close\r\n\r\n" + body
    s = _connect(gateway.port)
    try:
        s.sendall(raw)
    except OSError:
        pass
    answer = _answer(s)
    s.close()
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), answer[:80]
        status = int(answer.split(b" ", 2)[1])
        assert status != 500 and 100 <= status < 600, answer[:300]
    health = _connect(gateway.port)
    health.sendall(b"GET /mlyard/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert _answer(health).startswith(b"HTTP/1.1 200 ")


def test_the_gateway_sends_the_replica_credential_it_is_given_else_the_derived_one(tmp_path: Path):
    """On Kubernetes the replicas' credential is the Secret's mlyard_replica_token (the stage's pods hold
    it, never the internal one); on one machine it is derived from the internal credential; a local replica
    that runs a user's model gets one of its own, derived from that and its key (which opens no other)."""
    from mlyard.core.connection import REPLICA_HEADER, replica_key_token, replica_token
    from mlyard.tasks.replicas import Wanted

    platform = Wanted("rag.query.1.0", "rag", "query", 1, 0, "rag", [])
    model, other = (Wanted(f"ep.default.1.{i}", "ep", "default", 1, i, "m", [], reads=["/m"]) for i in (0, 1))
    given = Gateway(tmp_path, None, internal_token=INTERNAL, replica="from-the-secret")
    assert given._credential(platform) == [(REPLICA_HEADER, b"from-the-secret")]
    derived = Gateway(tmp_path, None, internal_token=INTERNAL)
    assert derived._credential(platform) == [(REPLICA_HEADER, replica_token(INTERNAL).encode())]
    own = derived._credential(model)
    assert own == [(REPLICA_HEADER, replica_key_token(replica_token(INTERNAL), model.key).encode())]
    assert own != derived._credential(other) and own != derived._credential(platform)
    assert replica_token(INTERNAL) != INTERNAL


def test_an_h2c_upgrade_is_answered_over_http_1_1(gateway):
    """`curl --http2` on plain HTTP offers `Upgrade: h2c`: the gateway answers the request itself over
    HTTP/1.1 (it once sent an empty reply), and closes the connection after it."""
    import shutil
    import subprocess

    s = _connect(gateway.port)
    s.sendall(b"GET /mlyard/health HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
              b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    s.close()
    if shutil.which("curl"):
        got = subprocess.run(["curl", "-s", "--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                              f"http://127.0.0.1:{gateway.port}/mlyard/health"], capture_output=True, text=True,
                             timeout=30)
        assert got.stdout == "200 1.1", got


@pytest.mark.parametrize("query", [b"since=nan", b"since=1e400", b"since=-inf", b"until=nan", b"since=abc"])
def test_statistics_over_a_period_that_is_no_time_are_400(gateway, query):
    s = _connect(gateway.port)
    s.sendall(b"GET /mlyard/stats?" + query + b" HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + INTERNAL.encode()
              + b"\r\n\r\n")
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 400 ") and b"epoch seconds" in head, head
    s.close()


def test_replicas_take_the_body_limit_the_gateway_takes_for_their_endpoint(tmp_path):
    """The gateway never takes (and holds) a body its replicas would refuse: an endpoint's replicas start
    with its limit, the platform's when it sets none, locally and on a cluster."""
    from mlyard.core.settings import Settings
    from mlyard.core.specs.endpoint import body_limit_args
    from mlyard.tasks.endpoints import local_replicas
    from mlyard.tasks.kubernetes import render_stage

    view = {"name": "ep", "id": 1, "max_request_bytes": None, "stages": [
        {"name": "default", "id": 1, "instance_type": "local",
         "resources": [{"id": 1, "model": "m/1", "pods": 1, "cpu": 1, "memory": "1Gi", "gpu": 0,
                        "pod_autoscaler": {"enabled": False}}]}]}
    assert Settings().max_request_bytes == 32 * 1024 * 1024  # `mlyard serve`'s own default (--max-body-mb 32)
    for limit in (None, 5 * 1024 * 1024):
        view["max_request_bytes"] = limit
        want = body_limit_args(limit, Settings().max_request_bytes)
        (replica,) = local_replicas(tmp_path, view, "default")
        assert replica.argv[-2:] == want
        rendered = render_stage(view, "default")
        deployment = next(o for o in rendered if o["kind"] == "Deployment")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == want
        assert float(want[1]) * 1024 * 1024 == (limit or 32 * 1024 * 1024)


def test_request_bodies_share_a_budget_of_bytes_past_which_the_gateway_answers_503(tmp_path: Path):
    """Sixteen 30 MiB public bodies, each under the limit, took the gateway from 68 to 983 MB: the bodies all
    requests hold at once have a budget; a request that would pass it is answered 503 with Retry-After at
    once, and once the others are answered (or gone) the same request is taken again."""
    from mlyard.serving.routing import Replica

    mib = 1024 * 1024
    gw = Gateway(tmp_path, None, internal_token=INTERNAL, max_body=mib)
    gw.shared.loaded = True
    gw.shared.endpoints = {"open": {"public": True, "default": "default", "max_request_bytes": None,
                                    "stages": {"default": {"status": "ACTIVE"}}, "tokens": {}}}
    gw.shared.router.set_stage("open", "default", [Replica("http://127.0.0.1:9", "m")], default=True)
    running = Running(gw, fastserver.Limits(head_seconds=5, body_seconds=10, idle_seconds=5, max_connections=8,
                                            max_body_bytes_in_flight=2 * mib))
    held = running.server
    head = b"POST /open/m/v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
    try:
        holding = []
        for _ in range(2):  # two bodies of 1,000,000 bytes, 900,000 of each sent: 1.8 MB held
            s = _connect(running.port)
            s.sendall(head % 1_000_000 + b"x" * 900_000)
            holding.append(s)
        deadline = time.monotonic() + 5
        while held.held < 1_800_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.held == 1_800_000
        s = _connect(running.port)
        s.sendall(head % 500_000 + b"y" * 500_000)
        answer = _answer(s)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after" in answer.lower(), answer[:300]
        assert b"request bodies" in answer
        for s in holding:
            s.close()
        deadline = time.monotonic() + 5
        while held.held and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.held == 0, "a request gone gives its bytes back"
        s = _connect(running.port)
        s.sendall(head % 500_000 + b"y" * 500_000)
        answer = _answer(s)
        assert b"request bodies" not in answer and answer.startswith(b"HTTP/1.1 50"), answer[:300]  # on to a replica
        assert held.held == 0
    finally:
        running.stop()


def _streaming_replica(ends: bool) -> tuple[int, threading.Thread]:
    """A replica that streams one chunked answer ending in [DONE], then (a moment later) the stream's end
    when `ends`, else breaks off without it."""
    listening = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listening.accept()
        with conn, listening:
            conn.recv(65536)
            event = b"data: [DONE]\n\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(event), event))
            time.sleep(0.5)
            if ends:
                conn.sendall(b"0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listening.getsockname()[1], thread


@pytest.mark.parametrize("ends", [True, False])
def test_a_client_that_hangs_up_after_done_is_no_failure_and_a_replica_that_breaks_off_is(tmp_path: Path, ends):
    """OpenAI's client closes its connection as soon as it reads [DONE], before the chunked stream's end:
    the answer was whole, and a failure counted for it would count against the model's promotion. A
    replica that breaks off its answer is one."""
    from mlyard.serving.gateway_state import Tracked
    from mlyard.serving.health import Health
    from mlyard.serving.proxy import Pool
    from mlyard.serving.routing import Replica

    port, replica = _streaming_replica(ends)
    url = f"http://127.0.0.1:{port}"
    gw = Gateway(tmp_path, None, internal_token=INTERNAL)
    gw.shared.loaded = True
    gw.shared.endpoints = {"open": {"public": True, "default": "default", "max_request_bytes": None,
                                    "stages": {"default": {"status": "ACTIVE"}}, "tokens": {}}}
    gw.shared.router.set_stage("open", "default", [Replica(url, "m")], default=True)
    gw.shared.replicas[url] = Tracked("open.default.1.0", url, Health(gw.check, time.monotonic()),
                                      Pool("127.0.0.1", port), path=None)
    running = Running(gw, fastserver.Limits(head_seconds=5, body_seconds=5, idle_seconds=5, max_connections=8))
    try:
        s = _connect(running.port)
        s.sendall(b"POST /open/m/v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        seen = b""
        while b"[DONE]" not in seen:
            seen += s.recv(65536)

        assert seen.startswith(b"HTTP/1.1 200 ")
        s.close()  # as the client does, before the stream's end
        replica.join(5)
        deadline = time.monotonic() + 5
        while not gw.shared.stats.totals and time.monotonic() < deadline:
            time.sleep(0.02)
        (counted,) = gw.shared.stats.totals.values()
        assert (counted.calls, counted.failures) == (1, 0 if ends else 1)
    finally:
        running.stop()


def test_a_replica_with_no_health_path_is_healthy_while_it_takes_connections(tmp_path: Path):
    """An engine of no health check (a `cmd` runtime) is probed as Kubernetes' tcpSocket probe does: behind a
    Service that kube-proxy has no endpoint for yet (a refused connection), it is not routed; once something
    listens, it is."""
    from mlyard.serving.gateway_state import Tracked, probed_status
    from mlyard.serving.health import Health
    from mlyard.serving.proxy import Pool, UpstreamError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = Gateway(tmp_path, None, internal_token=INTERNAL)
    t = Tracked("open.default.1.0", f"http://127.0.0.1:{port}", Health(gw.check, time.monotonic()),
                Pool("127.0.0.1", port), path=None)
    with pytest.raises(UpstreamError, match="cannot connect"):
        asyncio.run(probed_status(t, 1.0))
    with socket.create_server(("127.0.0.1", port)):
        assert asyncio.run(probed_status(t, 1.0)) == 200
