"""Safe promotion figures (issue 29 §5), on a throwaway embedded stack:

1. the gateway's CPU per request with no split, with a 10 % canary and with a 20 % shadow, in turns
   (ABC ABC ...), wrk at 16 connections on the endpoint's default URL (token-protected, as by default),
   the gateway's CPU read from /proc (goal: <= 10 % more with a canary);
2. rollback reaction: a candidate failing a fifth of its requests promoted under load from a Python
   client (4 threads); from the moment the client's own counts first show the live gate failing
   (min_requests answered by the candidate, error rate over the limit) to the last request the
   candidate answered (goal: the weight at 0 within 2 s), and the failed requests clients saw against
   the candidate's share.

    .venv/bin/python bench/promotion.py [--duration 8] [--rounds 3]

RandomForest(100) on breast-cancer behind both stages. This machine has 2 cores shared by wrk, the
gateway and the replicas; the numbers say what that gives, not what a bigger machine would.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import start  # noqa: E402
from bench.gateway import REPLICA, TOKEN, cpu_seconds, rf_model, wrk  # noqa: E402

FLAKY = """
import numpy as np
import mlflow.pyfunc

class Flaky(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import mlflow.sklearn
        self.model = mlflow.sklearn.load_model(context.artifacts["rf"])
    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=float)
        if np.random.random() < 0.2:
            raise RuntimeError("flaky")
        return self.model.predict(x)

mlflow.models.set_model(Flaky())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = start()
    import mlflow.pyfunc

    import mlyard.endpoints as endpoints
    import mlyard.promotion as promotion
    from mlyard.core.connection import gateway_url, internal_token, read_state, replica_token
    from mlyard.flows.platform import Platform

    home = Path(settings.home_dir)
    X = rf_model(home / "rf")
    (home / "flaky.py").write_text(FLAKY)
    mlflow.pyfunc.save_model(home / "flaky", python_model=str(home / "flaky.py"), artifacts={"rf": str(home / "rf")},
                             pip_requirements=["scikit-learn"])
    p = Platform(settings)
    for path in ("rf", "rf", "flaky"):
        p.models.create_from_directory("rf", home / path, f"file://{path}")
    gw, gateway_pid = gateway_url(settings), read_state(settings).pids["gateway"]
    endpoints.create({"name": "p", "stage": {"resources": [{"model": "rf/1"}]}})
    endpoints.add_stage("p", {"name": "cand", "resources": [{"model": "rf/2"}]})
    TOKEN["value"] = endpoints.issue_token("p", days=1)["token"]
    REPLICA["value"] = replica_token(internal_token(settings) or "")
    body = json.dumps({"instances": [X[0].tolist()]})
    url = f"{gw}/p/rf/v1/models/rf:predict"

    # 1. CPU per request, in turns.
    modes = {"no split": {"weight": 0, "shadow": 0}, "canary 10 %": {"weight": 10, "shadow": 0},
             "shadow 20 %": {"weight": 0, "shadow": 20}}
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, share in modes.items():
            promotion.canary("p", "cand", weight=0, shadow=0)
            promotion.canary("p", "cand", **{k: v for k, v in share.items() if v} or {"weight": 0})
            time.sleep(1.0)
            before = cpu_seconds(gateway_pid)
            r = wrk(url, body, 16, args.duration)
            r["cpu_us"] = (cpu_seconds(gateway_pid) - before) / r["requests"] * 1e6
            rows[mode].append(r)
    promotion.canary("p", "cand", weight=0, shadow=0)
    median = {m: sorted(r["cpu_us"] for r in rs)[len(rs) // 2] for m, rs in rows.items()}
    print(f"gateway CPU per request, wrk 16 connections, {args.duration:.0f} s x {args.rounds} rounds in turns:")
    for mode, rs in rows.items():
        each = ", ".join(f"{r['cpu_us']:.1f}" for r in rs)
        print(f"  {mode:12s} median {median[mode]:6.1f} µs ({each}); "
              f"{median[mode] / median['no split']:.3f}x of no split; rps {[round(r['rps']) for r in rs]}, "
              f"p99 {[r['p99'] for r in rs]} ms", flush=True)

    # 2. Rollback reaction under load.
    endpoints.add_stage("p", {"name": "flaky", "resources": [{"model": "rf/3"}]})
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        req_body = body.encode()
        while not stop.is_set():
            req = urllib.request.Request(url, data=req_body, headers={"content-type": "application/json",
                                                                      "authorization": f"Bearer {TOKEN['value']}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                    results.append((time.monotonic(), resp.status, resp.headers.get("x-mlyard-stage", "")))
            except urllib.error.HTTPError as exc:
                exc.read()
                results.append((time.monotonic(), exc.code, exc.headers.get("x-mlyard-stage", "")))

    min_requests, limit, weight = 50, 0.05, 10
    policy = {"steps": [weight, 100], "step_seconds": 120,
              "gates": {"live": {"max_error_rate": limit, "min_requests": min_requests}}}
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.monotonic()
    result = promotion.rollout("p", "flaky", policy=policy)
    ended = time.monotonic()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join()
    seen = failed = 0
    tripped = None
    for t, status, stage in results:
        if stage == "flaky" and t >= started:
            seen += 1
            failed += status >= 500
            if tripped is None and seen >= min_requests and failed / seen > limit:
                tripped = t
    last = max((t for t, _, stage in results if stage == "flaky"), default=None)
    window = [(s, st) for t, s, st in results if started <= t <= (last or ended)]
    promo = result["promotion"]
    print(f"rollback: {promo['status']} ({promo['reason']}); the rollout command took {ended - started:.2f} s")
    if tripped is not None and last is not None:
        print(f"  from the client's counts first failing the gate to the candidate's last answer: "
              f"{last - tripped:.2f} s (goal <= 2 s)")
    bad = sum(s >= 500 for s, _ in window)
    print(f"  clients while the candidate took traffic: {len(window)} requests, {bad} failed "
          f"({bad / max(1, len(window)):.2%}; the candidate's share was {weight} %, its failure rate ~20 %); "
          f"after: {sum(s >= 500 for t, s, _ in results if last and t > last)} failed of "
          f"{sum(1 for t, _, _ in results if last and t > last)}")


if __name__ == "__main__":
    main()
