"""Batch inference throughput, memory and scaling on the embedded stack.

1. Throughput: rows/s of the batch-inference flow over a 1,000,000-row JSONL file with one worker,
   divided by the rows/s of a bare loop that reads the same file, calls the same model's predict on
   batches of the same size and writes the same output lines. Target: >= 0.6. Both are wall time
   end to end (the flow's includes its Prefect, MLflow and model-loading overhead).
2. Memory: peak RSS of a process running the flow over a 10x larger file, divided by the same for
   the 1x file. Target: <= 1.2.
3. Scaling: 2 workers (2 local processes on 2 line ranges of the file) against 1 (report only).

`make bench` runs it; ROWS=200000 (env) makes a quicker, smaller run. Never part of the tests.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("ROWS", 1_000_000))
BATCH = 1000
FEATURES = 8


def make_data(path: Path, rows: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        for start in range(0, rows, 100_000):
            x = rng.normal(size=(min(100_000, rows - start), FEATURES)).round(4)
            fh.write("".join(f'{{"id": {start + i}, "features": {json.dumps(r)}}}\n' for i, r in enumerate(x.tolist())))


def make_model(path: Path) -> None:
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(5000, FEATURES))
    y = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])
    mlflow.sklearn.save_model(LogisticRegression(max_iter=300).fit(X, y), path, pip_requirements=["scikit-learn"])


def bare_loop(model_dir: Path, data: Path, out: Path) -> float:
    """The same work with nothing around it: read, batch, predict, write. Returns rows/s."""
    import mlflow.pyfunc
    import numpy as np

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(str(model_dir))
    rows = 0
    with open(data, "rb") as fh, open(out, "w") as dst:
        batch = []

        def flush():
            preds = model.predict(np.asarray([r["features"] for _, r in batch])).tolist()
            for (row, r), p in zip(batch, preds):
                dst.write(json.dumps({"row": row, "id": r["id"], "prediction": p}) + "\n")

        for row, line in enumerate(fh):
            batch.append((row, json.loads(line)))
            if len(batch) == BATCH:
                flush()
                rows += len(batch)
                batch = []
        if batch:
            flush()
            rows += len(batch)
    return rows / (time.perf_counter() - started)


def spec(model_dir: Path, data: Path, out: Path, workers: int = 1) -> dict:
    return {"name": "bench", "model": str(model_dir), "input_uri": str(data), "input_format": "jsonl",
            "output_uri": str(out), "id_field": "id", "batch_size": BATCH, "workers": workers,
            "output_probabilities": False}


def flow_rows_per_second(data: dict) -> tuple[float, float]:
    from mlyard.core.specs import BatchInferenceSpec
    from mlyard.flows.batch_inference import batch_infer

    started = time.perf_counter()
    result = batch_infer(BatchInferenceSpec(**data))
    wall = time.perf_counter() - started
    return result.rows / wall, result.rows_per_second


PEAK = """
import json, resource, sys
from mlyard.core.settings import Settings
from mlyard.core.connection import connect
connect(Settings())
from mlyard.flows.batch_inference import batch_infer
from mlyard.core.specs import BatchInferenceSpec
r = batch_infer(BatchInferenceSpec(**json.loads(sys.argv[1])))
print(json.dumps({"rows": r.rows, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_rss(data: dict) -> tuple[int, int]:
    proc = subprocess.run([sys.executable, "-c", PEAK, json.dumps(data)], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["rows"], got["peak_kib"]


def main() -> None:
    _stack.start()
    work = Path(tempfile.mkdtemp(prefix="mlyard-bench-batch-"))
    model, data, big = work / "model", work / "x1.jsonl", work / "x10.jsonl"
    print(f"writing {ROWS:,} and {10 * ROWS:,} rows of {FEATURES} features ...", flush=True)
    make_model(model)
    make_data(data, ROWS)
    make_data(big, 10 * ROWS)
    print(f"  {data.stat().st_size / 1e6:.0f} MB and {big.stat().st_size / 1e6:.0f} MB", flush=True)

    print("1. throughput, one worker (bare loop, flow, bare loop, flow; best of each)", flush=True)
    bare, flow, inner = [], [], []
    for i in range(2):
        bare.append(bare_loop(model, data, work / f"bare-{i}.jsonl"))
        f, w = flow_rows_per_second(spec(model, data, work / f"out-{i}"))
        flow.append(f)
        inner.append(w)
        print(f"  round {i + 1}: bare {bare[-1]:,.0f} rows/s   flow {flow[-1]:,.0f} rows/s end to end "
              f"({inner[-1]:,.0f} rows/s inside the workers)", flush=True)
    print(f"  ratio flow / bare = {max(flow) / max(bare):.3f}   (target >= 0.6)")

    print("2. memory: peak RSS of a process running the flow", flush=True)
    rows1, kib1 = peak_rss(spec(model, data, work / "mem-1"))
    rows10, kib10 = peak_rss(spec(model, big, work / "mem-10"))
    print(f"  {rows1:,} rows: {kib1 / 1024:.0f} MiB   {rows10:,} rows: {kib10 / 1024:.0f} MiB   "
          f"ratio {kib10 / kib1:.3f}   (target <= 1.2)")

    print("3. scaling on this machine (2 cores)", flush=True)
    one, _ = flow_rows_per_second(spec(model, data, work / "scale-1"))
    two, _ = flow_rows_per_second(spec(model, data, work / "scale-2", workers=2))
    print(f"  1 worker {one:,.0f} rows/s   2 workers {two:,.0f} rows/s   speed-up {two / one:.2f}x")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
