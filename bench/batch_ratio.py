"""Batch inference against the loop a user would write, as issue 27 §3 measures it: 1,000,000 JSONL rows
`{"id": ..., "x": [8 floats]}`, an MLflow LogisticRegression and RandomForest(100), `batch_size: 1000`,
`workers: 1`, predictions only (`output_probabilities: false`) and with probabilities (the default).

- hand loop: a fresh `python` process; standard-library json per line, `mlflow.sklearn.load_model`,
  `predict` (and `predict_proba`) per 1,000 rows, one JSON line written per row;
- mlyard: `mlyard batch -f spec.yaml` from a shell (PATH, HOME, LANG only) on a registered version
  (`mlyard models create`, outside the timing: registration compiles it, tasks/compiled.py).

Both command start to exit, in the same run, one after the other. Targets: LR >= 1.5x, RF >= 3x.
`ROWS=200000` makes a quicker run. Never part of the tests.

Why bench/batch_user_path.py showed 1.23-1.35x where a user measured 0.63x: its bare loop took each
row's class with a Python argmax and `.item()` per row, and timed neither the way the user's loop
does (predict and predict_proba vectorized per batch); that loop was slower than a user's.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROWS = int(os.environ.get("ROWS", 1_000_000))
BATCH = 1000

HAND = """
import json, sys
import mlflow.sklearn
import numpy as np
model = mlflow.sklearn.load_model(sys.argv[1])
proba_on = sys.argv[4] == "1"
with open(sys.argv[2]) as fh, open(sys.argv[3], "w") as out:
    rows = []
    def flush():
        x = np.asarray([r["x"] for r in rows])
        preds = model.predict(x).tolist()
        if proba_on:
            probs = model.predict_proba(x).tolist()
            for r, p, q in zip(rows, preds, probs):
                out.write(json.dumps({"id": r["id"], "prediction": p, "probabilities": q}) + "\\n")
        else:
            for r, p in zip(rows, preds):
                out.write(json.dumps({"id": r["id"], "prediction": p}) + "\\n")
    for line in fh:
        rows.append(json.loads(line))
        if len(rows) == 1000:
            flush()
            rows = []
    if rows:
        flush()
"""

MAKE = """
import json, sys
import mlflow.sklearn
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
rows = int(sys.argv[1])
rng = np.random.default_rng(0)
with open("rows.jsonl", "w") as fh:
    for start in range(0, rows, 100_000):
        x = rng.normal(size=(min(100_000, rows - start), 8)).round(4)
        fh.write("".join(f'{{"id": {start + i}, "x": {json.dumps(r)}}}\\n' for i, r in enumerate(x.tolist())))
x = rng.normal(size=(5000, 8))
y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
mlflow.sklearn.save_model(LogisticRegression(max_iter=500).fit(x, y), "lr")
mlflow.sklearn.save_model(RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y), "rf",
                          skops_trusted_types=["sklearn.tree._tree.Tree"])
"""


def main() -> None:
    project = Path(tempfile.mkdtemp(prefix="mlyard-bench-ratio-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "MLYARD_PREFECT_PORT": port}

    def run(*argv: str) -> tuple[float, float]:
        """Seconds from start to exit, and the peak RSS (MB) of the command's processes."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        proc = subprocess.run(list(argv), cwd=project, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:3])} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return time.perf_counter() - started, max(peak, before) / 1024

    try:
        run(str(BIN / "mlyard"), "up")
        run(str(BIN / "python"), "-c", MAKE, str(ROWS))
        runtimes = {}
        for model in ("lr", "rf"):
            out = subprocess.run([str(BIN / "mlyard"), "models", "create", f"bench-{model}", "--artifact-uri", model,
                                  "--json"], cwd=project, env=env, capture_output=True, text=True, check=True).stdout
            runtimes[model] = out.split('"runtime": ')[1].split('"')[1]
        print(f"{ROWS:,} rows of 8 features, batch {BATCH}, workers 1, command start to exit:")
        for model, label in (("lr", "LogisticRegression"), ("rf", "RandomForest(100)")):
            print(f"{label} (registered: {runtimes[model]})")
            for proba in (False, True):
                (project / "batch.yaml").write_text(
                    f"name: bench\nmodel: bench-{model}/1\ninput_uri: rows.jsonl\ninput_format: jsonl\nid_field: id\n"
                    f"batch_size: {BATCH}\nworkers: 1\noutput_probabilities: {str(proba).lower()}\n"
                    f"output_uri: out-{model}-{int(proba)}\n")
                hand, hand_rss = run(str(BIN / "python"), "-c", HAND, model, "rows.jsonl", "hand.jsonl", str(int(proba)))
                ours, _ = run(str(BIN / "mlyard"), "batch", "-f", "batch.yaml")
                what = "with probabilities" if proba else "predictions only  "
                print(f"  {what}  hand loop {hand:6.2f} s {ROWS / hand:9,.0f} rows/s   mlyard batch {ours:6.2f} s "
                      f"{ROWS / ours:9,.0f} rows/s   ratio {hand / ours:.2f}x")
    finally:
        subprocess.run([str(BIN / "mlyard"), "down"], cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
