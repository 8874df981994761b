"""Safe promotion end to end on the real stack (issue 29): traffic shares and shadows through the real
gateway, progressive promotions as flow runs under load from a bounded client on 127.0.0.1, each gate
(evaluation through the evaluation flow, shadow, live) and the rollback. The CLI runs in a fresh process
without the harness's environment. Nothing is mocked."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from uuid import UUID

import pytest
from test_user_paths import _ok, _one_line_error, mlyard

ROWS = [[0.3, 0.1, -0.3, 0.2]]


def call(url: str, token: str, row: list[float] | None = None, headers: dict | None = None) -> tuple[int, str]:
    """One request: its status and the stage that answered (x-mlyard-stage, on a split endpoint)."""
    req = urllib.request.Request(url, data=json.dumps({"instances": [row] if row else ROWS}).encode(),
                                 headers={"content-type": "application/json", "authorization": f"Bearer {token}",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, resp.headers.get("x-mlyard-stage", "")
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, exc.headers.get("x-mlyard-stage", "")


class Load:
    """A bounded client: `threads` callers, each one request at a time and at most 50 a second (load that
    leaves the promotion's flow run and the gateway their CPU), rows from a fixed random stream (a fifth of
    them have a first feature above 0.8416, the standard normal's 80th percentile)."""

    def __init__(self, url: str, token: str, threads: int = 3, pause: float = 0.02):
        import numpy as np

        self.url, self.token, self.pause = url, token, pause
        self.rows = np.random.default_rng(1).normal(size=(5000, 4)).round(4).tolist()
        self.results: list[tuple[float, int, str]] = []  # (time, status, stage)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, k: int) -> None:
        i = k
        while not self._stop.is_set():
            status, stage = call(self.url, self.token, self.rows[i % len(self.rows)])
            self.results.append((time.monotonic(), status, stage))
            i += len(self._threads)
            self._stop.wait(self.pause)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


FLAKY = """
import numpy as np
import mlflow.pyfunc
from sklearn.linear_model import LogisticRegression

class Flaky(mlflow.pyfunc.PythonModel):
    \"\"\"The classifier's answers, but a request holding a row whose first feature is above 0.8416 fails.\"\"\"
    def load_context(self, context):
        import mlflow.sklearn
        self.model = mlflow.sklearn.load_model(context.artifacts["clf"])
    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=float)
        if (x[:, 0] > 0.8416).any():
            raise RuntimeError("flaky: cannot score this row")
        return self.model.predict(x)

mlflow.models.set_model(Flaky())
"""


@pytest.fixture(scope="module")
def versions(platform, models, tmp_path_factory):
    """Model `pclf`: 1 the classifier (the default), 2 the same classifier (a good candidate), 3 the
    classifier failing a fifth of the requests, 4 a classifier trained on shuffled labels (worse)."""
    import mlflow.pyfunc
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("promotion-models")
    (root / "flaky.py").write_text(FLAKY)
    mlflow.pyfunc.save_model(root / "flaky", python_model=str(root / "flaky.py"),
                             artifacts={"clf": str(models["classifier"])}, pip_requirements=["scikit-learn"])
    shuffled = np.random.default_rng(3).permutation(models["y"])
    mlflow.sklearn.save_model(LogisticRegression(max_iter=200).fit(models["X"], shuffled), root / "worse",
                              pip_requirements=["scikit-learn"])
    made = [platform.models.create_from_directory("pclf", path, f"file://{path.name}")
            for path in (models["classifier"], models["classifier"], root / "flaky", root / "worse")]
    return [v.version for v in made]


@pytest.fixture(scope="module")
def shop(stack, settings, versions):
    import mlyard.endpoints as api

    view = api.create({"name": "shop", "stage": {"resources": [{"model": f"pclf/{versions[0]}"}]}})
    assert view["status"] == "ACTIVE", view
    token = api.issue_token("shop", days=1)["token"]
    yield {"token": token, "url": view["urls"]["default"]["pclf"], "versions": versions}
    for st in api.show("shop")["stages"]:
        if not st["default"]:
            api.delete("shop", st["name"])
    api.delete("shop")


@contextmanager
def second_gateway(settings):
    """Another gateway replica on the same home and catalog, as a cluster runs several."""
    import socket
    import subprocess
    import sys

    from mlyard.tasks.processes import stop_group

    with socket.socket() as sock:  # (not conftest's free_port: importing conftest again would run it again)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(settings.home_dir / "logs" / "gateway-2.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlyard.serving.gateway_main", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLYARD_HOME": str(settings.home_dir)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/mlyard/health", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the second gateway did not start"
                time.sleep(0.2)
        from mlyard.core.connection import internal_headers

        while True:  # its first read of the catalog and probe of the replicas (a loaded machine takes longer)
            with urllib.request.urlopen(urllib.request.Request(url + "/mlyard/routes", headers=internal_headers(settings)),
                                        timeout=5) as resp:
                table = json.loads(resp.read())
            shop = table["endpoints"].get("shop", {"stages": {}})
            if all(any(r["healthy"] for r in rs) for rs in shop["stages"].values()) and shop["stages"]:
                break
            assert time.monotonic() < deadline + 30, f"the second gateway routes nothing healthy: {table}"
            time.sleep(0.2)
        yield url
    finally:
        stop_group(proc, 5)
        log.close()


def _show(endpoint: str) -> dict:
    return json.loads(_ok(mlyard("endpoints", "rollout", "show", endpoint, "--json")))


def test_weights_split_pin_callers_and_a_shadow_reports_agreement(shop, settings, tmp_path):
    import mlyard.endpoints as api

    api.add_stage("shop", {"name": "good", "resources": [{"model": f"pclf/{shop['versions'][1]}"}]})
    # Bad requests are refused in one line, before any flow run.
    _one_line_error(mlyard("endpoints", "canary", "shop", "nosuch", "--weight", "10"), "stage", "good")
    _one_line_error(mlyard("endpoints", "canary", "shop", "default", "--weight", "10"), "default")
    _one_line_error(mlyard("endpoints", "canary", "shop", "good", "--weight", "10", "--shadow", "10"), "not both")
    _one_line_error(mlyard("endpoints", "canary", "shop", "good", "--weight", "150"), "weight", "99", "150")

    view = json.loads(_ok(mlyard("endpoints", "canary", "shop", "good", "--weight", "30", "--json")))
    assert {s["name"]: s["weight"] for s in view["stages"]} == {"default": 0, "good": 30}
    answered = [call(shop["url"], shop["token"]) for _ in range(200)]
    assert {status for status, _ in answered} == {200}
    good = sum(stage == "good" for _, stage in answered)
    assert 30 <= good <= 95 and good + sum(stage == "default" for _, stage in answered) == 200, good  # 60 expected
    pinned = {call(shop["url"], shop["token"], headers={"x-mlyard-affinity": "caller-7"})[1] for _ in range(20)}
    assert len(pinned) == 1, pinned  # one caller, one stage while the weights hold
    shares = [(h["stage"], h["share"], h["ended_at"] is None) for h in api.history("shop")]
    assert ("good", 30, True) in shares and ("default", 70, True) in shares, shares

    # A second gateway replica (stateless: it reads the shares from the catalog) routes a change within 2 s.
    with second_gateway(settings) as other:
        url = other + "/" + shop["url"].split("/", 3)[3]  # the same path, on the other gateway
        assert {call(url, shop["token"])[0] for _ in range(10)} == {200}
        _ok(mlyard("endpoints", "canary", "shop", "good", "--weight", "99"))
        changed = time.monotonic()
        while sum(call(url, shop["token"])[1] == "good" for _ in range(5)) < 4:
            assert time.monotonic() - changed < 2.0, "the second gateway did not route the new weight within 2 s"
    _ok(mlyard("endpoints", "canary", "shop", "good", "--weight", "30"))

    # A shadow: every answer from the default; the mirrored ones compared (the same classifier: all agree).
    _ok(mlyard("endpoints", "canary", "shop", "good", "--weight", "0"))
    _ok(mlyard("endpoints", "canary", "shop", "good", "--shadow", "100"))
    answered = [call(shop["url"], shop["token"]) for _ in range(40)]
    assert set(answered) == {(200, "default")}, set(answered)
    deadline = time.monotonic() + 10
    while (live := _show("shop")["shares"]["good"]["live"])["mirrored_pairs"] < 40:
        assert time.monotonic() < deadline, json.dumps(live)
        time.sleep(0.3)
    assert live["agreement"] == 1.0 and live["shadow_failures"] == 0, live
    shown = _ok(mlyard("endpoints", "rollout", "show", "shop"))  # as a person reads it
    assert "shares: default 100%, good 0% (shadow 100%)" in shown and "agreement 1.0" in shown, shown
    _ok(mlyard("endpoints", "canary", "shop", "good", "--shadow", "0"))


def test_a_good_candidate_goes_5_25_50_100_under_load_with_no_failed_request(shop, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("steps: [5, 25, 50, 100]\nstep_seconds: 2\n"
                      "gates:\n  live: {max_error_rate: 0.01, max_p99_ms: 2000, min_requests: 5}\n"
                      "  shadow: {min_agreement: 0.95, share: 50, min_pairs: 10}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [50, 20]\n")
    _one_line_error(mlyard("endpoints", "policy", "shop", "-f", str(bad)), "steps")
    _ok(mlyard("endpoints", "policy", "shop", "-f", str(policy)))
    with Load(shop["url"], shop["token"]) as load:
        out = json.loads(_ok(mlyard("endpoints", "rollout", "start", "shop", "good", "--json")))
        time.sleep(0.5)
    promo = out["promotion"]
    assert promo["status"] == "COMPLETE" and out["endpoint"]["default_stage"] == "good", promo
    gates = [(g["gate"], g["passed"], g.get("weight")) for g in promo["gates"]]
    assert gates == [("shadow", True, None), ("live", True, 5), ("live", True, 25), ("live", True, 50)], promo["gates"]
    assert promo["gates"][0]["measured"]["agreement"] == 1.0
    statuses = [status for _, status, _ in load.results]
    assert len(statuses) > 100 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert {stage for _, _, stage in load.results} >= {"default", "good"}
    shares = [h["share"] for h in json.loads(_ok(mlyard("endpoints", "history", "shop", "--json")))
              if h["stage"] == "good"]
    assert [s for s in shares if s][-3:] == [5, 25, 50], shares  # which version served what share, in order


def test_a_failing_candidate_is_rolled_back_at_its_first_step(shop, tmp_path):
    import mlyard.endpoints as api
    import mlyard.promotion as promotion

    api.add_stage("shop", {"name": "flaky", "resources": [{"model": f"pclf/{shop['versions'][2]}"}]})
    policy = {"steps": [10, 100], "step_seconds": 60, "gates": {"live": {"max_error_rate": 0.05, "min_requests": 20}}}
    with Load(shop["url"], shop["token"]) as load:
        started = time.monotonic()
        result = promotion.rollout("shop", "flaky", policy=policy)
        ended = time.monotonic()
        time.sleep(2.0)
    promo = result["promotion"]
    assert promo["status"] == "ROLLED BACK" and promo["step"] == 0 and ended - started < 30, promo
    (gate,) = promo["gates"]
    assert gate["gate"] == "live" and gate["passed"] is False and gate["measured"]["error_rate"] > 0.05, gate
    stage = next(s for s in result["endpoint"]["stages"] if s["name"] == "flaky")
    assert stage["weight"] == 0 and "live gate" in stage["reason"] and "error rate" in stage["reason"], stage
    window = [(status, st) for t, status, st in load.results if started <= t <= ended]
    failed = sum(status >= 500 for status, _ in window)
    assert failed and failed <= 0.10 * len(window), (failed, len(window))  # at most the candidate's 10 % share
    after = [(status, st) for t, status, st in load.results if t > ended + 1.0]  # the weight 0 reached the gateway
    assert after and all(status == 200 and st != "flaky" for status, st in after), after[:5]


def test_a_worse_candidate_never_receives_traffic(shop, models, tmp_path):
    import mlyard.endpoints as api

    api.add_stage("shop", {"name": "worse", "resources": [{"model": f"pclf/{shop['versions'][3]}"}]})
    holdout = tmp_path / "holdout.csv"
    # with an id and a comment the model must not see, as an evaluation's own data has (the demo's has an id)
    holdout.write_text("id,a,b,c,d,comment,label\n" + "".join(
        f"row-{i},{','.join(str(round(v, 4)) for v in x)},seen on day {i % 7},{y}\n"
        for i, (x, y) in enumerate(zip(models["X"][:200], models["y"][:200]))))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"steps: [50, 100]\nstep_seconds: 1\ngates:\n  evaluation: {{dataset: {holdout}, metric: "
                      "accuracy, id_field: id, drop_fields: [comment]}\n  live: {max_error_rate: 0.01, min_requests: 1}\n")
    out = json.loads(_ok(mlyard("endpoints", "rollout", "start", "shop", "worse", "--policy", str(policy), "--json")))
    promo = out["promotion"]
    (gate,) = promo["gates"]
    assert promo["status"] == "ROLLED BACK" and promo["phase"] == "evaluation", promo
    measured = gate["measured"]["pclf"]
    assert gate["gate"] == "evaluation" and measured["candidate"] < measured["default"], gate
    shown = _show("shop")
    assert shown["shares"]["worse"]["live"]["requests"] == 0 and shown["shares"]["worse"]["weight"] == 0
    assert "evaluation gate" in shown["shares"]["worse"]["reason"]
    assert not [h for h in api.history("shop") if h["stage"] == "worse" and h["share"]]


def test_pause_resume_after_its_run_ended_and_abort(shop, tmp_path):
    policy = tmp_path / "policy.yaml"  # never enough requests: the first step holds until a person acts
    policy.write_text("steps: [20, 100]\nstep_seconds: 1\nmax_wait_seconds: 600\n"
                      "gates:\n  live: {max_error_rate: 0.01, min_requests: 1000000}\n")
    queued = json.loads(_ok(mlyard("endpoints", "rollout", "start", "shop", "flaky", "--policy", str(policy),
                                   "--submit", "--json")))
    assert queued["status"] == "CREATE REQUESTED"
    deadline = time.monotonic() + 60
    while (active := _show("shop")["active"]) is None or active["phase"] != "steps":
        assert time.monotonic() < deadline, active
        time.sleep(0.3)
    _one_line_error(mlyard("endpoints", "rollout", "start", "shop", "worse"), "promotion in progress")
    paused = json.loads(_ok(mlyard("endpoints", "rollout", "pause", "shop", "--json")))
    assert paused["status"] == "PAUSED" and _show("shop")["shares"]["flaky"]["weight"] == 20

    # Its run ends under it (cancelled from the Prefect UI, or the stack stopped): resume starts a new run
    # that goes on at its step.


    _end_run(paused["flow_run_id"])
    resumed = json.loads(_ok(mlyard("endpoints", "rollout", "resume", "shop", "--json")))
    assert resumed["status"] == "RUNNING" and resumed["flow_run_id"] != paused["flow_run_id"], resumed
    deadline = time.monotonic() + 60
    while (active := _show("shop")["active"])["heartbeat_at"] <= resumed["heartbeat_at"]:
        assert time.monotonic() < deadline, active
        time.sleep(0.3)
    assert active["phase"] == "steps" and active["step"] == 0 and active["weight"] == 20

    # Its run is killed (kill -9): within 30 s the stack's scheduler has a new run take it up at its step,
    # while the stack keeps running; and `mlyard up` on the running stack finds it taken up already.
    killed_run = active["flow_run_id"]
    _kill_run_process(killed_run)
    killed = time.monotonic()
    while (again := _show("shop")["active"])["flow_run_id"] == killed_run:
        assert time.monotonic() - killed < 30, f"no new run took the promotion up within 30 s: {again}"
        time.sleep(0.5)
    marked = again
    while (again := _show("shop")["active"])["heartbeat_at"] <= marked["heartbeat_at"]:  # the new run beats
        assert time.monotonic() - killed < 60, again
        time.sleep(0.3)
    assert again["status"] == "RUNNING" and again["step"] == 0 and again["weight"] == 20 and again["resumes"] == 1
    _ok(mlyard("up"))
    assert _show("shop")["active"]["flow_run_id"] == again["flow_run_id"], "up started a second run for it"

    # A node drain evicts its pod: SIGTERM, what the kubelet sends first. Prefect's engine ends the run CRASHED
    # (its termination signal is no Exception: the flow's own handler does not roll the promotion back), and
    # the watch takes it up at its step: the step neither repeated past nor skipped.
    termed_run = again["flow_run_id"]
    _kill_run_process(termed_run, signal.SIGTERM)
    termed = time.monotonic()
    while (after := _show("shop")["active"])["flow_run_id"] == termed_run:
        assert time.monotonic() - termed < 30, f"no new run took the promotion up within 30 s: {after}"
        time.sleep(0.5)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(UUID(termed_run)).state.type.value == "CRASHED"  # type: ignore[union-attr]
    assert after["status"] == "RUNNING" and after["step"] == 0 and after["weight"] == 20 and after["resumes"] == 2
    assert _show("shop")["shares"]["flaky"]["weight"] == 20
    aborted = json.loads(_ok(mlyard("endpoints", "rollout", "abort", "shop", "--json")))
    assert aborted["status"] == "ABORTED"
    shown = _show("shop")
    assert shown["active"] is None and shown["shares"]["flaky"]["weight"] == 0


def _kill_run_process(flow_run_id: str, sig: int = signal.SIGKILL) -> None:
    """kill -9 (or `sig`) the process of a flow run (the warm runner's child names itself after its run)."""
    from pathlib import Path

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and flow_run_id.encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), sig)
                    return
            except OSError:
                continue
        time.sleep(0.3)
    raise AssertionError(f"no process of flow run {flow_run_id}")


def test_a_promotion_whose_run_fails_is_rolled_back_with_the_reason(shop, tmp_path):
    """An evaluation gate that cannot be judged (its data has no label field) ends the run FAILED: the
    promotion is ROLLED BACK at once, the canary's weight set before it back to 0, the error as the reason
    (it once stayed RUNNING at its evaluation with the canary live)."""
    import mlyard.endpoints as api

    api.add_stage("shop", {"name": "broken-gate", "resources": [{"model": f"pclf/{shop['versions'][1]}"}]})
    _ok(mlyard("endpoints", "canary", "shop", "broken-gate", "--weight", "10"))
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("a,b,c,d\n0.1,0.2,0.3,0.4\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"steps: [50, 100]\nstep_seconds: 1\ngates:\n  evaluation: {{dataset: {unlabelled}, metric: "
                      "accuracy}\n")
    ran = mlyard("endpoints", "rollout", "start", "shop", "broken-gate", "--policy", str(policy), "--json")
    assert ran.returncode != 0, ran.stdout
    shown = _show("shop")
    assert shown["active"] is None, shown["active"]
    promo = shown["promotions"][-1]
    assert promo["status"] == "ROLLED BACK" and "its run failed in the evaluation phase" in promo["reason"], promo
    assert shown["shares"]["broken-gate"]["weight"] == 0 and "rolled back" in shown["shares"]["broken-gate"]["reason"]
    api.delete("shop", "broken-gate")


def _end_run(flow_run_id: str) -> None:
    """Cancel a flow run as the Prefect UI's Cancel does, and wait until it has ended."""
    from prefect import get_client

    from mlyard.tasks.orchestration import cancel_flow_run

    cancel_flow_run(flow_run_id, "the test cancels the promotion's run")
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            if client.read_flow_run(UUID(flow_run_id)).state.is_final():
                return
        assert time.monotonic() < deadline, "the cancelled run did not end"
        time.sleep(0.3)
