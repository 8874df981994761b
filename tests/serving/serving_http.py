"""Starting servers as users do (their own process, a free port) and calling them over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

MLYARD = str(Path(sys.executable).parent / "mlyard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], ready_word: str = "serving ", env: dict[str, str] | None = None,
          timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start a server process (with `env` added to this one's); return it and what it printed up to its
    ready line (within `timeout` seconds)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **env} if env else None)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError("the server exited:\n" + "".join(lines))
        lines.append(line)
        if line.startswith(ready_word):
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
    return proc, "".join(lines)


def serve(model_path: Path, name: str, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`mlyard serve MODEL --port P --name NAME`; returns the process and its URL."""
    port = free_port()
    proc, _ = start([MLYARD, "serve", str(model_path), "--port", str(port), "--name", name, *extra], env=env)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def call(url: str, body: bytes | dict | None = None, method: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict | bytes]:
    """(status, JSON answer or raw bytes) of one request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def probe_wheel(dest: Path, name: str = "mlyardprobe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel: the deployment's package, installed with no network."""
    import base64
    import hashlib
    import zipfile

    path = dest / f"{name}-{version}-py3-none-any.whl"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{f},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(t.encode())}" for f, t in files.items()] + [f"{name}-{version}.dist-info/RECORD,,"]
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return path
