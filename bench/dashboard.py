"""The dashboard page as a browser loads it, with 1,000 trainings and 50 endpoints in the catalog
(issue 28: <= 300 ms). A throwaway embedded stack; 1,000 COMPLETED `train` flow runs made through
Prefect's API (as finished trainings leave them), 50 endpoints recorded in the catalog with a minute of
statistics each, 5 notebooks; then GET /dashboard?key=... (the link `mlyard status` prints) 20 times
after one warm-up, on a fresh connection each time.

    .venv/bin/python bench/dashboard.py [--trainings 1000] [--endpoints 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainings", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    import _stack

    settings = _stack.start()
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    from mlyard import stack
    from mlyard.core.names import FLOW_TRAIN
    from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.endpoints import Endpoints
    from mlyard.registry.notebooks import Notebooks
    from mlyard.registry.tables import EndpointStatMinute

    t0 = time.monotonic()
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(flow(name=FLOW_TRAIN)(lambda: None))
        for i in range(args.trainings):
            client.create_flow_run(flow(name=FLOW_TRAIN)(lambda: None), name=f"t{i}", state=Completed(),
                                   parameters={"spec": {"name": f"t{i}"}})
    catalog = Catalog(settings.catalog_db_url)
    eps = Endpoints(catalog)
    minute = int(time.time() // 60) - 1
    with catalog.session() as s:
        for i in range(args.endpoints):
            s.add(EndpointStatMinute(minute=minute, endpoint=f"ep{i}", stage="default", model=f"m{i}/1",
                                     counts={"calls": i * 10, "failures": i % 3, "latency_sum": 5.0 * i, "hist": {},
                                             "classes": {}}))
    for i in range(args.endpoints):
        eps.create(EndpointSpec(name=f"ep{i}", stage=StageSpec(resources=[StageResourceSpec(model=f"m{i}/1")])),
                   [(f"m{i}", "1")])
        eps.set_status(f"ep{i}", "ACTIVE")
    books = Notebooks(catalog)
    for i in range(5):
        books.create(f"nb{i}", {"name": f"nb{i}", "instance_type": "cpu-2", "boot_storage_gb": 50,
                                "data_storage_gb": 10})
    print(f"made {args.trainings} trainings (flow {flow_id}), {args.endpoints} endpoints, 5 notebooks in "
          f"{time.monotonic() - t0:.1f} s")

    url = stack.status(settings)["dashboard"]
    times = []
    for i in range(args.rounds + 1):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as resp:
            body = resp.read()
        if i:
            times.append((time.perf_counter() - t) * 1000)
    assert b"Trainings COMPLETE<b>%d</b>" % args.trainings in body, body[:400]
    print(f"GET /dashboard ({len(body):,} bytes), {args.rounds} loads: median {statistics.median(times):.0f} ms, "
          f"p90 {sorted(times)[int(0.9 * len(times)) - 1]:.0f} ms, max {max(times):.0f} ms (target <= 300 ms)")


if __name__ == "__main__":
    main()
