"""The very first `serve` of a newly registered model (issue 27 §3: <= 1 s; 4.42 s before, when the first
start compiled it): `mlyard models create` registers a RandomForest(100) (and compiles it, timed apart),
then `mlyard serve NAME/1` from a shell, command start to its first answered prediction. Then the same
for a model registered with compiling off (`MLYARD_COMPILE_AT_REGISTRATION=false`: the old way).

Never part of the tests. Prints the figures; each run takes its own stack.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent

MAKE = """
import mlflow.sklearn, numpy as np
from sklearn.ensemble import RandomForestClassifier
rng = np.random.default_rng(0)
x = rng.normal(size=(5000, 8)); y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
for name in ("rf-a", "rf-b"):
    mlflow.sklearn.save_model(RandomForestClassifier(n_estimators=100, random_state=len(name) + ord(name[-1])).fit(x, y),
                              name, skops_trusted_types=["sklearn.tree._tree.Tree"])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    project = Path(tempfile.mkdtemp(prefix="mlyard-bench-serve-"))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "MLYARD_PREFECT_PORT": str(free_port()), "MLYARD_CACHE_DIR": str(project / "cache")}

    def run(*argv: str, extra: dict[str, str] | None = None) -> tuple[float, str]:
        started = time.perf_counter()
        proc = subprocess.run(list(argv), cwd=project, env={**env, **(extra or {})}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:3])} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return time.perf_counter() - started, proc.stdout

    def first_answer(model: str) -> tuple[float, str]:
        port = free_port()
        started = time.perf_counter()
        proc = subprocess.Popen([str(BIN / "mlyard"), "serve", model, "--port", str(port)], cwd=project, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        body = json.dumps({"instances": [[0.1] * 8]}).encode()
        name = model.split("/")[0]
        try:
            while True:
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{name}:predict", data=body,
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        resp.read()
                    break
                except OSError:
                    if proc.poll() is not None:
                        raise SystemExit(proc.stdout.read() if proc.stdout else "serve exited") from None
                    time.sleep(0.01)
            return time.perf_counter() - started, ""
        finally:
            os.killpg(proc.pid, 15)
            out = proc.communicate(timeout=20)[0]
            runtime = next((line for line in out.splitlines() if line.startswith("runtime:")), "")
            first_answer.runtime = runtime  # type: ignore[attr-defined]

    try:
        run(str(BIN / "mlyard"), "up")
        run(str(BIN / "python"), "-c", MAKE)
        reg_a, _ = run(str(BIN / "mlyard"), "models", "create", "rf-a", "--artifact-uri", "rf-a")
        serve_a, _ = first_answer("rf-a/1")
        runtime_a = first_answer.runtime  # type: ignore[attr-defined]
        reg_b, _ = run(str(BIN / "mlyard"), "models", "create", "rf-b", "--artifact-uri", "rf-b",
                       extra={"MLYARD_COMPILE_AT_REGISTRATION": "false"})
        serve_b, _ = first_answer("rf-b/1")
        runtime_b = first_answer.runtime  # type: ignore[attr-defined]
        print("RandomForest(100), `mlyard serve NAME/1` from a shell, start to its first answered prediction:")
        print(f"  compiled at registration: models create {reg_a:5.2f} s, first serve {serve_a:5.2f} s  ({runtime_a})")
        print(f"  not compiled at registration: models create {reg_b:5.2f} s, first serve {serve_b:5.2f} s  ({runtime_b})")
    finally:
        subprocess.run([str(BIN / "mlyard"), "down"], cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
