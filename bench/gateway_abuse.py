"""The gateway under a bounded abuse run (issue 27 §1), on a throwaway embedded stack with default
settings: a private endpoint (token needed) serving a LogisticRegression, and a legitimate client
calling it with its token every 50 ms throughout. The gateway's resident memory (VmRSS from /proc) is
sampled every 20 ms; the target is a peak within +50 MB of its idle RSS, with every legitimate request
answered 200.

The abuse, in phases, each as an attacker on this machine would send it:
1. six parallel POSTs of 60 MiB with no Authorization header, each sending its whole body as fast as
   the gateway takes it;
2. six connections each sending a 101 MB header, a megabyte at a time;
3. 300 half-open connections: a request line and part of a header, then nothing;
4. 300 connections that send nothing at all;
5. six valid-token POSTs declaring 100 MiB (over the default 64 MiB limit).

    .venv/bin/python bench/gateway_abuse.py
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import start  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    settings = start()
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import mlyard.endpoints as endpoints
    from mlyard.core.connection import gateway_url, read_state
    from mlyard.flows.platform import Platform

    x, y = load_iris(return_X_y=True)
    model_dir = Path(settings.home_dir) / "lr-model"
    mlflow.sklearn.save_model(LogisticRegression(max_iter=500).fit(x, y), model_dir)
    Platform(settings).models.create_from_directory("lr", model_dir, "file://lr-model")
    endpoints.create({"name": "guarded", "stage": {"resources": [{"model": "lr/1"}]}})
    token = endpoints.issue_token("guarded", days=1)["token"]
    gw = gateway_url(settings)
    host, port = gw.removeprefix("http://").split(":")
    pid = read_state(settings).pids["gateway"]
    path = "/guarded/lr/v1/models/lr:predict"

    stop = threading.Event()
    legit = {"ok": 0, "failed": 0, "worst_ms": 0.0}

    def client() -> None:
        body = json.dumps({"instances": [x[0].tolist()]}).encode()
        while not stop.is_set():
            t0 = time.perf_counter()
            req = urllib.request.Request(gw + path, data=body, headers={"authorization": f"Bearer {token}",
                                                                        "content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                    legit["ok" if resp.status == 200 else "failed"] += 1
            except (urllib.error.URLError, OSError):
                legit["failed"] += 1
            legit["worst_ms"] = max(legit["worst_ms"], (time.perf_counter() - t0) * 1000)
            time.sleep(0.05)

    samples: list[float] = []

    def sampler() -> None:
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.02)

    time.sleep(2)
    idle = rss_mb(pid)
    threads = [threading.Thread(target=client, daemon=True), threading.Thread(target=sampler, daemon=True)]
    for t in threads:
        t.start()
    answers: dict[str, list[str]] = {}

    def flood(what: str, head: bytes, megabytes: int) -> None:
        """Send `head`, then `megabytes` MiB, as fast as the gateway takes them; record its first line."""
        s = socket.create_connection((host, int(port)), timeout=30)
        first = b""
        try:
            s.sendall(head)
            for _ in range(megabytes):
                s.sendall(b"a" * (1024 * 1024))
        except OSError:
            pass
        try:
            first = s.recv(200)
        except OSError:
            pass
        answers.setdefault(what, []).append(first.split(b"\r\n", 1)[0].decode() or "closed")
        s.close()

    def post_60mib(i: int) -> None:
        flood("60 MiB POST, no token",
              f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {60 * 1024 * 1024}\r\n\r\n".encode(), 60)

    def big_header(i: int) -> None:
        flood("101 MB header", f"GET {path} HTTP/1.1\r\nhost: {host}\r\nx-pad: ".encode(), 101)

    def declared_100mib(i: int) -> None:
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n"
                  f"content-length: {100 * 1024 * 1024}\r\n\r\n".encode())
        answers.setdefault("100 MiB declared, valid token", []).append(s.recv(200).split(b"\r\n", 1)[0].decode())
        s.close()

    def parallel(fn, n: int) -> float:
        t0 = time.perf_counter()
        ts = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter() - t0

    timings = {"60 MiB POSTs": parallel(post_60mib, 6), "101 MB headers": parallel(big_header, 6)}
    t0 = time.perf_counter()
    half_open = []
    for _ in range(300):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}\r\nx-partial: ".encode())
        half_open.append(s)
    silent = [socket.create_connection((host, int(port)), timeout=30) for _ in range(300)]
    closed_by_gateway = 0
    for s in half_open + silent:  # each is answered (408) or closed by the gateway, not left open
        try:
            s.settimeout(20)
            s.recv(200)
            closed_by_gateway += 1
        except OSError:
            pass
        s.close()
    timings["600 half-open and silent connections closed"] = time.perf_counter() - t0
    timings["100 MiB declared"] = parallel(declared_100mib, 6)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(15)
    peak = max(samples)
    print(f"gateway RSS idle {idle:.1f} MB, peak {peak:.1f} MB during the abuse: +{peak - idle:.1f} MB "
          f"(target <= +50 MB: {'OK' if peak - idle <= 50 else 'MISSED'})")
    for what, got in answers.items():
        print(f"  {what}: {sorted(set(got))} x{len(got)}")
    print(f"  half-open and silent connections the gateway closed within 20 s: {closed_by_gateway} of 600")
    print("  phase times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"legitimate requests during the run: {legit['ok']} answered 200, {legit['failed']} failed, slowest "
          f"{legit['worst_ms']:.0f} ms")


if __name__ == "__main__":
    main()
