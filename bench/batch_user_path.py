"""Batch inference as a user meets it: `mlyard batch -f spec.yaml` from a shell in a project directory,
command start to exit, default settings (probabilities on, one worker), against a bare loop in a
fresh process that reads the same file, calls the same model (predict_proba and the class) on the
same batches and writes the same lines. Both in the same run, on 1,000,000 JSONL rows of 8 features,
a logistic regression, batch 1,000. Target (issue 8): ratio of rows/s >= 0.8.

`make bench` runs it; ROWS=200000 (env) makes a quicker run. Never part of the tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from batch_inference import BATCH, make_data, make_model  # noqa: E402

BIN = Path(sys.executable).parent
ROWS = int(os.environ.get("ROWS", 1_000_000))

BARE = """
import json, sys
import mlflow.sklearn
import numpy as np
model = mlflow.sklearn.load_model(sys.argv[1])
classes = model.classes_
with open(sys.argv[2], "rb") as fh, open(sys.argv[3], "w") as out:
    batch = []
    def flush():
        proba = model.predict_proba(np.asarray([r["features"] for _, r in batch]))
        for (row, r), p in zip(batch, proba):
            out.write(json.dumps({"row": row, "id": r["id"], "prediction": classes[p.argmax()].item(),
                                  "probabilities": p.tolist()}) + "\\n")
    for row, line in enumerate(fh):
        batch.append((row, json.loads(line)))
        if len(batch) == %d:
            flush()
            batch = []
    if batch:
        flush()
""" % BATCH


def main() -> None:
    project = Path(tempfile.mkdtemp(prefix="mlyard-bench-batch-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}

    def run(*argv: str, extra: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        proc = subprocess.run(list(argv), cwd=project, env={**env, **(extra or {})}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:3])} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return time.perf_counter() - started

    try:
        run(str(BIN / "mlyard"), "up", extra={"MLYARD_PREFECT_PORT": port})
        (project / "data").mkdir()
        make_data(project / "data" / "rows.jsonl", ROWS)
        make_model(project / "model")
        (project / "batch.yaml").write_text(f"name: bench\nmodel: ./model\ninput_uri: data/rows.jsonl\ninput_format: "
                                            f"jsonl\nid_field: id\nbatch_size: {BATCH}\noutput_uri: out\n")
        bare = run(str(BIN / "python"), "-c", BARE, "model", "data/rows.jsonl", "bare.jsonl")
        mlyard = run(str(BIN / "mlyard"), "batch", "-f", "batch.yaml")
        with open(project / "out" / "rows.jsonl.predictions.jsonl") as a, open(project / "bare.jsonl") as b:
            first_a, first_b = a.readline(), b.readline()
        print(f"{ROWS:,} rows, batch {BATCH}, probabilities on, one worker, command start to exit:")
        print(f"  bare loop (fresh process)     {bare:7.2f} s  {ROWS / bare:10,.0f} rows/s")
        print(f"  mlyard batch -f batch.yaml    {mlyard:7.2f} s  {ROWS / mlyard:10,.0f} rows/s")
        ratio = bare / mlyard
        print(f"  ratio {ratio:.2f} (target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
        print(f"  first lines:\n    mlyard {first_a.strip()[:120]}\n    bare   {first_b.strip()[:120]}")
    finally:
        subprocess.run([str(BIN / "mlyard"), "down"], cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
