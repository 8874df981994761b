"""A server stopping as a pod being replaced stops (issue 69 §2): on SIGTERM the lean server (serving/listener.py,
the gateway's and every model server's) takes no new connection, answers the requests in flight and those
that come on its open connections to their end (closing each after), closes a connection left idle, and
exits; the gateway reports ready only once its routing table is read and
until SIGTERM, so Kubernetes sends it nothing it cannot route."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
from conftest import free_port

# an app streaming ten pieces, 0.3 s apart, to any request: a long answer in flight when SIGTERM comes
APP = textwrap.dedent("""
    import asyncio, sys
    from mlyard.serving import listener

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (m := await receive())["type"] != "lifespan.shutdown":
                await send({"type": m["type"] + ".complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(10):
            await send({"type": "http.response.body", "body": b"piece %d\\n" % i, "more_body": True})
            await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"end\\n"})

    listener.run(app, "127.0.0.1", int(sys.argv[1]), on_ready=lambda url: print(url, flush=True), drain_seconds=20)
""")


def test_sigterm_refuses_new_connections_and_finishes_the_answer_in_flight():
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", APP, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("http://")
        idle = socket.create_connection(("127.0.0.1", port))  # a kept-alive connection with nothing asked
        kept = socket.create_connection(("127.0.0.1", port))  # one whose client asks again while it drains
        with httpx.Client(timeout=10) as client, client.stream("GET", f"http://127.0.0.1:{port}/") as answer:
            pieces = answer.iter_lines()
            assert next(pieces) == "piece 0"
            server.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            kept.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # closing it now would have lost this request
            refused = False
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                refused = True
            assert refused, "a stopping server takes no new connection (the client tries another replica)"
            assert list(pieces)[-1] == "end", "the answer in flight is whole"
            assert answer.headers.get("connection") != "keep-alive"
        kept.settimeout(10)
        reply = b""
        while chunk := kept.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"connection: close" in reply.lower() and reply.endswith(b"end\n\r\n0\r\n\r\n")
        idle.settimeout(5)
        assert idle.recv(1) == b"", "a connection left idle is closed"
        assert server.wait(10) == 0, "it exits once nothing is in flight"
    finally:
        server.kill()
        server.wait()


def test_the_gateway_is_ready_once_its_table_is_read_and_until_it_stops(tmp_path):
    from test_gateway_abuse import INTERNAL, Running

    from mlyard.serving import fastserver
    from mlyard.serving.gateway import Gateway

    gw = Gateway(tmp_path, None, internal_token=INTERNAL)
    running = Running(gw, fastserver.Limits())
    try:
        url = f"http://127.0.0.1:{running.port}"
        first = httpx.get(f"{url}/mlyard/ready", timeout=5)
        assert first.status_code == 503 and first.json()["reason"] == "the routing table is not read yet"
        assert httpx.get(f"{url}/mlyard/health", timeout=5).status_code == 200, "alive all the same"
        gw.shared.loaded = True  # as its first read of the catalog does
        assert httpx.get(f"{url}/mlyard/ready", timeout=5).status_code == 200
        gw.stopping = True  # as serving/listener.py does on SIGTERM
        assert httpx.get(f"{url}/mlyard/ready", timeout=5).json() == {"ready": False, "reason": "draining"}
    finally:
        running.stop()
