"""What another account of the machine tries against a running stack (tests/test_second_user.py runs it
as that account, with Debian's own python3 and nothing of mlyard's): the standard library only.

Reads the targets as JSON on stdin; prints one JSON object: for each attempt, what came back (an HTTP
status, "closed 1008" for a websocket, "refused"/"denied" for a socket or a file).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import sys
import urllib.parse


def request(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None) -> str:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        return str(conn.getresponse().status)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error {type(exc).__name__}"
    finally:
        conn.close()


def websocket(url: str, subprotocol: str | None, first: dict | None) -> str:
    """A websocket handshake, then `first` as a text frame; what the server does with it."""
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return "closed before the handshake"
        head += chunk
    status = head.split(b" ", 2)[1].decode()
    if status != "101":
        return status
    rest = head.split(b"\r\n\r\n", 1)[1]
    if first is not None:
        payload, mask = json.dumps(first).encode(), os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    frames = []
    try:
        while True:
            while len(rest) < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    return "closed: " + ", ".join(frames)
                rest += chunk
            opcode, length = rest[0] & 0x0F, rest[1] & 0x7F
            start = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            while len(rest) < start:
                rest += sock.recv(4096)
            if length == 126:
                length = struct.unpack("!H", rest[2:4])[0]
            elif length == 127:
                length = struct.unpack("!Q", rest[2:10])[0]
            while len(rest) < start + length:
                rest += sock.recv(4096)
            payload, rest = rest[start:start + length], rest[start + length:]
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                return f"closed {code}"
            frames.append(payload.decode(errors="replace")[:80])
            if len(frames) > 3:
                return "data: " + ", ".join(frames)
    except socket.timeout:
        return "open, silent: " + ", ".join(frames)
    finally:
        sock.close()


def unix(path: str) -> str:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        return "connected"
    except PermissionError:
        return "denied"
    except (FileNotFoundError, ConnectionRefusedError):
        return "refused"
    finally:
        sock.close()


def token_line(port: int) -> str:
    """A made-up token to a line-based channel (Prefect's attempt control channel of its worker)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:
        return "refused"
    try:
        sock.sendall(b"0123456789abcdef0123456789abcdef\n")
        return "closed" if sock.recv(1024) == b"" else "answered"
    except ConnectionResetError:
        return "closed"
    finally:
        sock.close()


def listing(path: str) -> str:
    try:
        return f"listed {len(os.listdir(path))}"
    except PermissionError:
        return "denied"
    except FileNotFoundError:
        return "missing"


def reading(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return f"read {len(fh.read())}"
    except PermissionError:
        return "denied"
    except FileNotFoundError:
        return "missing"


def main() -> None:
    t = json.load(sys.stdin)
    api, run_body = t["prefect_api"], {"name": "intruder", "parameters": {"spec": t["training_spec"]}}
    ws = api.replace("http://", "ws://")
    out = {
        "prefect: list deployments": request(f"{api}/deployments/filter", "POST", {}),
        "prefect: run train/train-local": request(f"{api}/deployments/{t['deployment_id']}/create_flow_run", "POST", run_body),
        "prefect: run train/train-local, a made-up string": request(
            f"{api}/deployments/{t['deployment_id']}/create_flow_run", "POST", run_body,
            {"Authorization": "Basic " + base64.b64encode(b"mlyard:guess").decode()}),
        "prefect: read flow runs": request(f"{api}/flow_runs/filter", "POST", {}),
        "prefect: read settings": request(f"{api}/admin/settings"),
        "prefect: read variables": request(f"{api}/variables/filter", "POST", {}),
        "prefect: events websocket, no subprotocol": websocket(f"{ws}/events/out", None, {"type": "filter"}),
        "prefect: events websocket, no token": websocket(f"{ws}/events/out", "prefect", {"type": "auth"}),
        "prefect: events websocket, a made-up token": websocket(f"{ws}/events/out", "prefect",
                                                               {"type": "auth", "token": "mlyard:guess"}),
        "prefect: logs websocket, no token": websocket(f"{ws}/logs/out", "prefect", {"type": "auth"}),
        "prefect: events in, no token": websocket(f"{ws}/events/in", "prefect", {"type": "auth"}),
        "mlyard api: queue a run": request(f"{t['mlyard_api']}/v1/runs", "POST",
                                        {"deployment": "train/train-local", "parameters": {"spec": t["training_spec"]}}),
        "mlyard api: list trainings": request(f"{t['mlyard_api']}/v1/queries/trainings", "POST", {}),
        "mlyard api: dashboard without its key": request(f"{t['mlyard_api']}/dashboard"),
        "gateway: statistics": request(f"{t['gateway']}/mlyard/stats"),
        "gateway: routes": request(f"{t['gateway']}/mlyard/routes"),
        "mlflow: search experiments": request(f"{t['mlflow']}/ajax-api/2.0/mlflow/experiments/search", "POST",
                                           {"max_results": 10}),
        "mlflow: move an alias": request(f"{t['mlflow']}/api/2.0/mlflow/registered-models/alias", "POST",
                                      {"name": t["model"], "alias": "champion", "version": "1"}),
        "mlflow: the page": request(f"{t['mlflow']}/"),
        "mlflow: sign in as its admin, a guessed password": request(
            f"{t['mlflow']}/api/2.0/mlflow/registered-models/search", "GET", None,
            {"Authorization": "Basic " + base64.b64encode(b"mlyard:mlyard").decode()}),
        "postgres: its socket": unix(t["postgres_socket"]),
        "warm runner: its socket": unix(t["warm_socket"]),
        "home: list it": listing(t["home"]),
        "home: list its notebooks": listing(os.path.join(t["home"], "notebooks")),
        "home: read stack.json": reading(os.path.join(t["home"], "stack.json")),
        "home: read the MLflow sign-in": reading(os.path.join(t["home"], "mlflow-auth.ini")),
    }
    for port, kind in t["other_ports"].items():
        if kind == "control":
            out[f"port {port}: a made-up control token"] = token_line(int(port))
            continue
        # a replica answers its health paths (`/`, `/health`: the probes send no header) to anyone, by design;
        # what it serves beyond them is the gateway's alone
        out[f"port {port}: GET /v2"] = request(f"http://127.0.0.1:{port}/v2")
        out[f"port {port}: POST /v2/models/m/infer"] = request(f"http://127.0.0.1:{port}/v2/models/m/infer", "POST",
                                                           {"inputs": []})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
