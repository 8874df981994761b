"""Cold start as a user meets it: `mlyard serve MODEL` started as a fresh process (PATH and HOME only),
timed until its first correct prediction over OIP v1; then its RSS, and it is stopped. The model is
the peer bench's iris logistic regression (../shared/peer-bench data) unless one is given.

    python bench/cold_start.py [MODEL_DIR] [-- extra mlyard serve flags, e.g. --no-compile]

The first start of a model compiles it to ONNX and restarts lean; run it once before timing starts
of an already-deployed model. Prints one line: seconds to the first prediction and RSS in MB.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = Path(os.environ.get("BENCH_HOME", "/tmp/bench")) / "data" / "mlflow" / "iris_lr"


def main() -> None:
    args = sys.argv[1:]
    extra = args[args.index("--") + 1:] if "--" in args else []
    model = Path(args[0]) if args and args[0] != "--" else DEFAULT
    if not (model / "MLmodel").is_file():
        sys.exit(f"no MLflow model at {model}; run ../shared/peer-bench/setup.sh or give a model directory")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    began = time.perf_counter()
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mlyard"), "serve", str(model), "--port", str(port),
                             "--name", "m", *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"mlyard serve exited with {proc.returncode}")
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/m:predict", body)
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if json.loads(resp.read())["predictions"] == [0]:
                        break
            except OSError:
                time.sleep(0.005)
        ready = time.perf_counter() - began
        rss = int(next(line for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS")).split()[1])
        print(f"first prediction after {ready:.3f} s, RSS {rss / 1024:.0f} MB")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


if __name__ == "__main__":
    main()
