"""What a replica's sandbox costs a served model (issue 67's second figure): requests a second through the
gateway to a model served by a sandboxed replica (the default) against the same model served by a replica
that runs as replicas ran before the sandbox (no walls, the replicas' shared credential), on one throwaway
embedded stack, with wrk as the client, in turns (ABAB), 16 connections. Target: at least 0.95x.

Two endpoints serve the same registered version (RandomForest(100) on breast-cancer, compiled to ONNX as
registration does by default), one replica each; the second's replica is then made unsandboxed the way a
platform operator would have had it: its wanted file without walls, its process ended, the supervisor
starting it again. Every request carries the endpoint's token and is checked, counted and logged.

    .venv/bin/python bench/serving_sandbox.py [--duration 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import start  # noqa: E402
from bench.gateway import TOKEN, rf_model, routes, wrk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = start()
    import psutil

    import mlyard.endpoints as endpoints
    from mlyard.core.connection import gateway_url
    from mlyard.flows.platform import Platform
    from mlyard.tasks import replicas as files

    model_dir = Path(settings.home_dir) / "rf-model"
    X = rf_model(model_dir)
    Platform(settings).models.create_from_directory("rf", model_dir, "file://rf-model")
    gw = gateway_url(settings)
    for name in ("walled", "bare"):
        endpoints.create({"name": name, "public": True, "stage": {"resources": [{"model": "rf/1", "pods": 1}]}})
    TOKEN["value"] = ""

    # the bare one: its replica without walls, started again by the supervisor
    (bare,) = [w for w in files.wanted(settings.home_dir) if w.endpoint == "bare"]
    (walled,) = [w for w in files.wanted(settings.home_dir) if w.endpoint == "walled"]
    files.want(settings.home_dir, dataclasses.replace(bare, walls=None, reads=None))
    old = files.states(settings.home_dir)[bare.key].pid
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while True:
        st = files.states(settings.home_dir).get(bare.key)
        if st and st.pid not in (None, old) and files.probe(st.url + "/v2/health/ready") == 200:
            break
        assert time.monotonic() < deadline, "the bare replica did not come back"
        time.sleep(0.2)
    time.sleep(3)  # the gateway's next probe routes it again
    kinds = {key: psutil.Process(files.states(settings.home_dir)[key].pid).name() for key in (walled.key, bare.key)}
    assert kinds == {walled.key: "bwrap", bare.key: "mlyard"}, kinds
    assert all(r["status"] == "HEALTHY" for ep in ("walled", "bare") for r in routes(gw)[ep]["stages"]["default"])

    body = json.dumps({"instances": [X[0].tolist()]})
    urls = {name: f"{gw}/{name}/rf/v1/models/rf:predict" for name in ("walled", "bare")}
    for name in urls:  # warm up: the compiled model, the gateway's pools
        wrk(urls[name], body, 16, 2)
    rps: dict[str, list[float]] = {"walled": [], "bare": []}
    for _ in range(args.rounds):
        for name in ("walled", "bare"):
            got = wrk(urls[name], body, 16, args.duration)
            rps[name].append(got["rps"])
            print(f"{name:6s} {got['rps']:8.0f} req/s  p50 {got['p50']:.2f} ms  p99 {got['p99']:.2f} ms", flush=True)
    med = {k: statistics.median(v) for k, v in rps.items()}
    ratio = med["walled"] / med["bare"]
    print(f"a model's requests a second through the gateway, sandboxed replica: median {med['walled']:.0f}, "
          f"unsandboxed: median {med['bare']:.0f}; {ratio:.3f}x; target >= 0.95x: {'OK' if ratio >= 0.95 else 'MISSED'}")


if __name__ == "__main__":
    main()
