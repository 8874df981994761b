"""`mlyard logs` with a million records (issue 28: found by id in <= 100 ms).

A throwaway embedded stack; 1,000,000 records written as the platform writes them (500,000 of 1,000
trainings' runs under <home>/logs/records/training/, 500,000 inference records of 50 endpoints in the
model server's file); the mlyard API's own indexing catches up (timed: records per second); then each
query 30 times with random ids, as `mlyard logs` asks it: POST /v1/queries/logs to the warm mlyard API
on a fresh connection (what the CLI does after its own start), and five times the whole command from
a shell (its Python start included).

    .venv/bin/python bench/logs.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    import _stack

    settings = _stack.start()
    from mlyard import logs
    from mlyard.core import logrecords as lr
    from mlyard.core.connection import internal_headers, read_state

    home = settings.home_dir
    half = args.records // 2
    trainings = [str(uuid.uuid4()) for _ in range(1000)]
    inferences: list[str] = []
    t0 = time.monotonic()
    train_file = home / "logs" / "records" / "training" / "2026-11-26.jsonl"
    train_file.parent.mkdir(parents=True, exist_ok=True)
    with open(train_file, "ab") as f:
        for i in range(half):
            tid = trainings[i % 1000]
            f.write(lr.line(lr.document("training", "INFO" if i % 100 else "WARNING", f"epoch={i} loss=0.{i % 97}",
                                        trainingId=tid, flowRunId=tid, name=f"train-{i % 1000}")))
    inf_file = home / "endpoints" / "logs" / "digits.jsonl"
    inf_file.parent.mkdir(parents=True, exist_ok=True)
    with open(inf_file, "ab") as f:
        for i in range(args.records - half):
            iid = uuid.uuid4().hex
            if i % 1000 == 0:
                inferences.append(iid)
            f.write(lr.line(lr.document("inference", "INFO", "POST /v1/models/digits:predict 200 rows=1 1.1 ms",
                                        endpointId=str(i % 50), endpointStageId=str(100 + i % 50), inferenceId=iid,
                                        action="Endpoint.Model", modelName="digits")))
    print(f"wrote {args.records:,} records in {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    store = logs.store(home)
    while store.count() < args.records:  # the mlyard API's background indexing (every 2 s)
        time.sleep(0.5)
    took = time.monotonic() - t0
    print(f"the mlyard API indexed them in {took:.1f} s ({args.records / took:,.0f} records/s); "
          f"index {store.path.stat().st_size / 1e6:.0f} MB")

    state = read_state(settings)
    assert state is not None and state.service_url
    headers = {**internal_headers(settings), "content-type": "application/json"}

    def api(**arguments) -> tuple[float, int]:
        t = time.perf_counter()
        req = urllib.request.Request(f"{state.service_url}/v1/queries/logs", data=json.dumps(arguments).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            n = len(json.loads(resp.read()))
        return (time.perf_counter() - t) * 1000, n

    cases = {
        "a training by id (its latest 100 of 500)": lambda: api(training=random.choice(trainings)),
        "a training by an 8-character start of its id": lambda: api(training=random.choice(trainings)[:8]),
        "one inference request by id": lambda: api(inference=random.choice(inferences)),
        "an endpoint's inference records, last hour (latest 100)": lambda: api(
            category="inference", endpoint=str(random.randrange(50)), since="1h"),
        "a training's WARNING and above": lambda: api(training=random.choice(trainings), level="WARNING"),
    }
    print(f"\nthrough the warm mlyard API, {args.rounds} queries each (ms):")
    for name, fn in cases.items():
        fn()
        times, counts = zip(*(fn() for _ in range(args.rounds)))
        print(f"  {name}: median {statistics.median(times):.1f}, p90 {sorted(times)[int(len(times) * 0.9)]:.1f}, "
              f"max {max(times):.1f} ({min(counts)}-{max(counts)} records)")

    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "MLYARD_HOME": str(home)}  # the bench's home is not a project's .mlyard
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        out = subprocess.run([str(Path(sys.executable).parent / "mlyard"), "logs", "--training",
                              random.choice(trainings)[:8], "--json"], cwd=home.parent, env=env,
                             capture_output=True, text=True, timeout=60)
        walls.append(time.perf_counter() - t)
        assert out.returncode == 0 and out.stdout.count("\n") == 100, out.stderr
    print(f"\n`mlyard logs --training ID8 --json` from a shell: median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f})")


if __name__ == "__main__":
    main()
