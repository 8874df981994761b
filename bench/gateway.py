"""Endpoint figures (issue 10 §5), on a throwaway embedded stack, with wrk as the client:

1. gateway overhead: the same replica called directly and through the gateway, in turns (ABAB), at
   1 connection (the p50 the hop adds) and at 16 (throughput, and the gateway's CPU per request read
   from /proc);
2. scaling: one replica against two behind the gateway (RandomForest(100) on breast-cancer);
3. promotion under load: wrk runs while a stage is promoted; every non-2xx answer and socket error counts;
4. a replica SIGKILLed under load: failed requests, and how long until it is back and routed;
5. a push of new code (`endpoints deploy --sync`) to a 2-replica entry-script endpoint under load:
   failed requests while its replicas are replaced one at a time.

    .venv/bin/python bench/gateway.py [--duration 8]

Everything is measured end to end with default settings: endpoints are token-protected (the
default), so every request through the gateway carries a token and has it checked, and every request
is logged. This machine has 2 cores shared by wrk, the gateway and the replicas; the
numbers say what that gives, not what a bigger machine would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import start  # noqa: E402

TOKEN = {"value": ""}  # the endpoints' token, sent with every request (a replica called directly ignores it)
REPLICA = {"value": ""}  # the credential the gateway sends the replica called directly (its own)


def wrk(url: str, body: str, connections: int, seconds: float, check: bool = True) -> dict:
    """One wrk run; with `check`, any failed request ends the benchmark (its figures would be wrong)."""
    script = Path("/tmp/mlyard-bench-post.lua")
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {TOKEN["value"]}"\n'
                      f'wrk.headers["x-mlyard-replica"] = "{REPLICA["value"]}"\n'
                      f"wrk.body = [==[{body}]==]\n")
    proc = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, check=True)
    text = proc.stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        assert m, text
        return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]

    requests = int(re.search(r"(\d+) requests in", text)[1])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]), "p50": ms("50%"), "p99": ms("99%"),
           "requests": requests, "non2xx": int(non2xx[1]) if non2xx else 0,
           "socket_errors": sum(map(int, sock.groups())) if sock else 0}
    if check and (out["non2xx"] or out["socket_errors"]):
        raise SystemExit(f"{url}: {out['non2xx']} non-2xx answers, {out['socket_errors']} socket errors: {text}")
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def routes(gw: str) -> dict:
    from mlyard.core.connection import internal_headers
    from mlyard.core.settings import Settings

    req = urllib.request.Request(f"{gw}/mlyard/routes", headers=internal_headers(Settings()))
    return json.loads(urllib.request.urlopen(req, timeout=5).read())["endpoints"]


def rf_model(folder: Path):
    """RandomForest(100) fitted on breast-cancer, saved as an MLflow model in `folder`: its rows (X)."""
    import mlflow.sklearn
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_breast_cancer(return_X_y=True)
    mlflow.sklearn.save_model(RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y), folder,
                              pip_requirements=["scikit-learn"], skops_trusted_types=["sklearn.tree._tree.Tree"])
    return X


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--only-overhead", action="store_true", help="Parts 1 and 1b alone.")
    args = parser.parse_args()
    settings = start()
    import mlyard.endpoints as endpoints
    from mlyard.core.connection import gateway_url, read_state
    from mlyard.flows.platform import Platform
    from mlyard.tasks import replicas as files

    model_dir = Path(settings.home_dir) / "rf-model"
    X = rf_model(model_dir)
    p = Platform(settings)
    p.models.create_from_directory("rf", model_dir, "file://rf-model")
    p.models.create_from_directory("rf", model_dir, "file://rf-model")
    gw = gateway_url(settings)
    gateway_pid = read_state(settings).pids["gateway"]
    for name, pods in (("rf1", 1), ("rf2", 2)):
        endpoints.create({"name": name, "stage": {"resources": [{"model": "rf/1", "pods": pods}]}})
    tokens = {name: endpoints.issue_token(name, days=1)["token"] for name in ("rf1", "rf2")}
    TOKEN["value"] = tokens["rf1"]
    from mlyard.core.connection import internal_token, replica_token

    body = json.dumps({"instances": [X[0].tolist()]})
    direct = routes(gw)["rf1"]["stages"]["default"][0]["url"] + "/v1/models/rf:predict"
    from mlyard.core.connection import replica_key_token

    port = int(direct.split(":")[2].split("/")[0])  # a model's replica answers its own credential alone
    key = next(k for k, st in files.states(settings.home_dir).items() if st.port == port)
    REPLICA["value"] = replica_key_token(replica_token(internal_token(settings) or ""), key)
    via = f"{gw}/rf1/rf/v1/models/rf:predict"
    d = args.duration
    report: dict = {}

    # 1. Overhead, in turns.
    for c in (1, 16):
        rows = {"direct": [], "gateway": []}
        for _ in range(2):
            rows["direct"].append(wrk(direct, body, c, d))
            before = cpu_seconds(gateway_pid)
            r = wrk(via, body, c, d)
            r["gateway_cpu_us_per_request"] = (cpu_seconds(gateway_pid) - before) / r["requests"] * 1e6
            rows["gateway"].append(r)
        report[f"c{c}"] = rows
        med = {k: sorted(x["p50"] for x in v)[len(v) // 2] for k, v in rows.items()}
        print(f"connections {c}: direct p50 {[x['p50'] for x in rows['direct']]} ms, rps "
              f"{[round(x['rps']) for x in rows['direct']]}; gateway p50 {[x['p50'] for x in rows['gateway']]} ms, rps "
              f"{[round(x['rps']) for x in rows['gateway']]}, CPU/request "
              f"{[round(x['gateway_cpu_us_per_request']) for x in rows['gateway']]} µs; p50 added "
              f"{med['gateway'] - med['direct']:.3f} ms", flush=True)

    # 1b. A user's API key instead of the endpoint's token, with the project's rate limits on (set high
    # enough never to refuse, so that every request is checked and counted): the gateway's CPU per request
    # with each, in turns, at 16 connections.
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.teams import Teams

    teams = Teams(Catalog(settings.catalog_db_url))
    _, key = teams.create_user("bench-user")
    teams.set_member("default", "bench-user", "viewer")
    teams.set_quota("default", rate_limit=1e6, key_rate_limit=1e6)
    time.sleep(2)  # the gateway's next read of the catalog
    rows = {"token": [], "key_and_limits": []}
    for _ in range(2):
        for label, credential in (("token", tokens["rf1"]), ("key_and_limits", key)):
            TOKEN["value"] = credential
            before = cpu_seconds(gateway_pid)
            r = wrk(via, body, 16, d)
            r["gateway_cpu_us_per_request"] = (cpu_seconds(gateway_pid) - before) / r["requests"] * 1e6
            rows[label].append(r)
    report["keys"] = rows
    print("connections 16, gateway CPU/request: endpoint token "
          f"{[round(x['gateway_cpu_us_per_request']) for x in rows['token']]} µs, API key + rate limits "
          f"{[round(x['gateway_cpu_us_per_request']) for x in rows['key_and_limits']]} µs; rps "
          f"{[round(x['rps']) for x in rows['token']]} / {[round(x['rps']) for x in rows['key_and_limits']]}",
          flush=True)
    teams.set_quota("default", rate_limit=None, key_rate_limit=None)
    TOKEN["value"] = tokens["rf1"]
    if args.only_overhead:
        print(json.dumps(report, default=str)[:4000])
        return

    # 2. Scaling behind the gateway.
    one = [wrk(via, body, 16, d)["rps"] for _ in range(2)]
    TOKEN["value"] = tokens["rf2"]
    two = [wrk(f"{gw}/rf2/rf/v1/models/rf:predict", body, 16, d)["rps"] for _ in range(2)]
    TOKEN["value"] = tokens["rf1"]
    report["scaling"] = {"one_replica_rps": one, "two_replicas_rps": two,
                         "ratio": sum(two) / sum(one)}
    print(f"scaling: 1 replica {[round(x) for x in one]} req/s, 2 replicas {[round(x) for x in two]} req/s, "
          f"ratio {report['scaling']['ratio']:.2f}", flush=True)

    # 3. Promotion under load.
    endpoints.add_stage("rf1", {"name": "next", "resources": [{"model": "rf/2"}]})
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(wrk(via, body, 8, d + 4, check=False)))
    load.start()
    time.sleep(2)
    t0 = time.monotonic()
    endpoints.promote("rf1", "next")
    promote_seconds = time.monotonic() - t0
    load.join()
    report["promotion"] = {**result, "promote_seconds": promote_seconds}
    print(f"promotion under load: {result['requests']} requests, {result['non2xx']} non-2xx, "
          f"{result['socket_errors']} socket errors (promote took {promote_seconds:.1f} s)", flush=True)

    # 4. SIGKILL one of two replicas under load.
    TOKEN["value"] = tokens["rf2"]
    key = files.of_stage(settings.home_dir, "rf2", "default")[0].key
    pid = files.states(settings.home_dir)[key].pid
    result = {}
    load = threading.Thread(target=lambda: result.update(wrk(f"{gw}/rf2/rf/v1/models/rf:predict", body, 8, d + 6,
                                                             check=False)))
    load.start()
    time.sleep(2)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    back = None
    while time.monotonic() - killed < 60:
        st = files.states(settings.home_dir).get(key)
        mine = [r for r in routes(gw)["rf2"]["stages"]["default"] if r.get("key") == key]
        if st and st.pid not in (None, pid) and mine and mine[0]["status"] == "HEALTHY" and mine[0]["healthy"] \
                and mine[0]["failures"] == 0 and st.started_at > time.time() - 60:
            back = time.monotonic() - killed
            break
        time.sleep(0.05)
    load.join()
    log = files.log_path(settings.home_dir, key).read_text()
    report["kill"] = {**result, "back_seconds": back}
    print(f"SIGKILL under load: {result['requests']} requests, {result['non2xx']} non-2xx, {result['socket_errors']} "
          f"socket errors; replica back and routed after {back if back is None else round(back, 2)} s "
          f"(health check: interval 1 s x (max_retries 2 + 1) = 3 s, plus its start; supervisor backoff 1 s)",
          flush=True)
    print(log.splitlines()[-3:])

    # 5. Push new code to a 2-replica entry-script endpoint under load: its replicas are replaced one by one.
    app = Path(settings.home_dir).parent / "bench-app"
    app.mkdir(exist_ok=True)
    (app / "score.py").write_text(SCORE.format(version=1))
    endpoints.deploy("app", app, replicas=2)
    TOKEN["value"] = endpoints.issue_token("app", days=1)["token"]
    url = json.loads((app / "infra" / "inference.config.json").read_text())["MLYARD_SCORE_URL"]
    (app / "score.py").write_text(SCORE.format(version=2))
    result = {}
    load = threading.Thread(target=lambda: result.update(wrk(url, '{"data": [1, 2, 3]}', 8, d + 20, check=False)))
    load.start()
    time.sleep(2)
    t0 = time.monotonic()
    endpoints.deploy("app", app)
    push_seconds = time.monotonic() - t0
    load.join()
    report["sync"] = {**result, "push_seconds": push_seconds}
    print(f"code push under load (2 replicas replaced one at a time): {result['requests']} requests, "
          f"{result['non2xx']} non-2xx, {result['socket_errors']} socket errors (the push took {push_seconds:.1f} s)",
          flush=True)
    print(json.dumps(report, indent=1))


SCORE = """
import json


def init():
    pass


def run(raw):
    return {{"version": {version}, "sum": sum(json.loads(raw)["data"])}}
"""


if __name__ == "__main__":
    main()
