"""The tuning flow on the real embedded stack: trials are real processes, the study lives in the catalog DB."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mlyard.core.specs import TuningSpec, load_spec, with_overrides

TRIAL = """
import json, os, sys, time, urllib.request
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
def mark(what, **data):  # the test's Marks server: a trial's sandbox shares no folder with the others
    request = urllib.request.Request(args["--marks"] + "/" + what, data=json.dumps(data).encode(), method="POST")
    return json.loads(urllib.request.urlopen(request, timeout=30).read())
start = time.time()
order = mark("start")["order"]
if int(args.get("--barrier", 0)):
    # wait (up to 20 s) until that many trials have started: trials run one after another fail the overlap test
    mark("barrier", count=int(args["--barrier"]))
x = float(args.get("--x", 0))
mode = args.get("--mode", "quadratic")
bad = mode == "fourth-is-bad" and order == 3
for epoch in range(1, int(args.get("--epochs", 3)) + 1):
    if mode == "quadratic":
        value = 1 - (x - 3) ** 2 / 10 + epoch * 0.001
    else:
        value = 0.1 if bad else 0.8 + epoch * 0.01
    print(f"epoch={epoch} accuracy={value:.4f}", flush=True)
    time.sleep(float(args.get("--sleep", 0.0)) * (5 if bad else 1))
open(os.path.join(os.environ["EM_MODEL_DIR"], "model.json"), "w").write(json.dumps({"x": x}))
mark("end", start=start, end=time.time(), order=order)
"""


class Marks:
    """What trials tell the test, over HTTP on 127.0.0.1 (their specs ask for the network): the order in
    which they start, a barrier they wait at together, and each one's span."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.started, self.spans, self.lock = 0, [], threading.Condition()
        marks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"{}")
                answer = marks.answer(self.path.strip("/"), data)
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, what: str, data: dict) -> dict:
        with self.lock:
            if what == "start":
                self.started += 1
                self.lock.notify_all()
                return {"order": self.started - 1}
            if what == "barrier":
                self.lock.wait_for(lambda: self.started >= data["count"], timeout=20)
                return {}
            self.spans.append(data)
            return {}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def marks():
    found = Marks()
    yield found
    found.close()


def _spec(src: Path, marks: Marks, **kw) -> TuningSpec:
    fixed = {"marks": marks.url, **kw.pop("fixed", {})}
    data = {"name": kw.pop("name", "tn"), "strategy": "random", "seed": 1,
            "training": {"name": "x", "experiment": "tuning-tests", "source_uri": str(src), "entry_point": "main.py",
                         "hyperparameters": fixed, "network": True},
            "parameters": [{"name": "x", "type": "double", "min": 0, "max": 6}],
            "objective": {"metric": "accuracy", "direction": "maximize"}, **kw}
    return load_spec(TuningSpec, data)


def _trials(platform, tuning_id):
    from mlyard.tunings import trials

    return trials(platform.settings.catalog_db_url, tuning_id)


def test_grid_tuning_end_to_end_with_nested_runs(platform, algorithm, tmp_path, marks):
    from mlyard.flows.tuning import tune

    spec = _spec(algorithm(TRIAL), marks, name="grid-x", strategy="grid", parallel_trials=2, max_trials=50,
                 parameters=[{"name": "x", "type": "int", "min": 1, "max": 5, "step": 1}])
    result = tune(spec)
    assert (result.status, result.reason) == ("COMPLETE (SuggestionEndReached)", "SuggestionEndReached")
    assert result.counts["succeeded"] == 5 and result.best_params == {"x": 3}
    rows = _trials(platform, result.tuning_id)
    assert sorted(r["params"]["x"] for r in rows) == [1, 2, 3, 4, 5]
    assert {r["state"] for r in rows} == {"SUCCEEDED"}
    children = platform.tracking.client.search_runs(
        [platform.tracking.experiment_id("tuning-tests")], filter_string=f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert len(children) == 5 and all(c.info.status == "FINISHED" for c in children)
    best = platform.tracking.get_run(result.best_run_id)
    assert best.params["x"] == "3" and best.metrics["accuracy"] == pytest.approx(1.003)
    parent = platform.tracking.get_run(result.run_id)
    assert parent.tags["mlyard.reason"] == "SuggestionEndReached"

    from mlyard.tunings import get_tuning

    assert get_tuning(result.tuning_id).status == "COMPLETE (SuggestionEndReached)"
    mv = platform.models.create_from_training("grid-best", result.tuning_id, "COMPLETE (SuggestionEndReached)",
                                              result.best_run_id, kind="tuning")
    assert mv.lineage["tuning_id"] == result.tuning_id and mv.run_id == result.best_run_id


def test_goal_reached_ends_early(platform, algorithm, tmp_path, marks):
    from mlyard.flows.tuning import tune

    spec = _spec(algorithm(TRIAL), marks, name="goal", max_trials=30,
                 parameters=[{"name": "x", "type": "double", "min": 2.5, "max": 3.5}],
                 objective={"metric": "accuracy", "direction": "maximize", "goal": 0.9})
    result = tune(spec)
    assert result.reason == "GoalReached" and sum(result.counts.values()) < 30


@pytest.mark.parametrize("min_trials_required, expected", [(3, "EARLY_STOPPED"), (4, "SUCCEEDED")])
def test_median_rule_stops_the_clearly_worse_trial(platform, algorithm, tmp_path, min_trials_required, expected, marks):
    from mlyard.flows.tuning import tune

    spec = _spec(algorithm(TRIAL), marks, name=f"median-{min_trials_required}", max_trials=4,
                 fixed={"mode": "fourth-is-bad", "epochs": 8, "sleep": 0.05},
                 early_stopping={"min_trials_required": min_trials_required, "start_step": 4})
    result = tune(spec)
    rows = sorted(_trials(platform, result.tuning_id), key=lambda r: r["number"])
    assert [r["state"] for r in rows] == ["SUCCEEDED"] * 3 + [expected]
    if expected == "EARLY_STOPPED":
        assert "after 4 reports" in rows[3]["reason"]
        log = platform.tracking.download(rows[3]["run_id"], "logs/output.log", tmp_path / "l").read_text()
        assert "epoch=4 " in log and "epoch=8 " not in log  # stopped at its 4th report, not before


def test_metrics_unavailable_counts_as_failed_and_fails_the_tuning(platform, algorithm, tmp_path, marks):
    from mlyard.flows.tuning import tune
    from mlyard.tunings import get_tuning

    spec = _spec(algorithm(TRIAL), marks, name="no-metric", max_trials=10, max_failed_trials=2,
                 metrics=[{"name": "accuracy", "regex": r"ACCURACY IS ([\d.]+)"}])
    state = tune(spec, return_state=True)
    assert state.is_failed()
    tuning_id = str(state.state_details.flow_run_id)
    rows = _trials(platform, tuning_id)
    assert [r["state"] for r in rows] == ["METRICS_UNAVAILABLE", "METRICS_UNAVAILABLE"]
    for r in rows:  # MLflow says so too, not SUCCEEDED
        run = platform.tracking.get_run(r["run_id"])
        assert run.tags["mlyard.trial_state"] == "METRICS_UNAVAILABLE" and run.status == "FAILED"
        assert "never printed" in run.tags["mlyard.status_reason"]
    info = get_tuning(tuning_id)
    assert info.status == "FAIL HYPERPARAMETER TUNING" and "2 trials failed" in info.cause


def test_parallel_trials_overlap(platform, algorithm, tmp_path, marks):
    from mlyard.flows.tuning import tune

    tune(_spec(algorithm(TRIAL), marks, name="parallel", max_trials=3, parallel_trials=3, fixed={"barrier": 3}))
    spans = marks.spans
    assert len(spans) == 3
    assert max(s["start"] for s in spans) < min(s["end"] for s in spans), "the trials did not run at the same time"


def test_four_parallel_trials_on_two_gpu_slots_run_two_at_a_time(platform, algorithm, tmp_path, monkeypatch, caplog, marks):
    """GPU slots on one machine (issue 26): a Prefect global concurrency limit of 2 (MLYARD_GPU_SLOTS; no
    GPU here, the slots are what is tested), 4 trials of 1 GPU each at parallel 4: never more than 2 at
    once, the waiting ones say what they wait for, and every slot is given back."""
    from prefect.client.orchestration import get_client

    from mlyard.api import check_gpu_slots
    from mlyard.core.errors import SpecError
    from mlyard.flows.tuning import tune
    from mlyard.tasks.gpu_slots import LIMIT

    monkeypatch.setenv("MLYARD_GPU_SLOTS", "2")
    spec = _spec(algorithm(TRIAL), marks, name="gpu-slots", max_trials=4, parallel_trials=4,
                 fixed={"sleep": 0.5})
    spec = with_overrides(spec, {"training": {"resources": {"gpu_count": 1}}})
    with caplog.at_level("INFO"):
        tune(spec)
    spans = sorted(marks.spans, key=lambda s: s["start"])
    assert len(spans) == 4
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans], key=lambda e: (e[0], e[1]))
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2, f"{most} trials ran at once on 2 GPU slots"
    assert any("waiting for 1 of the 2 GPU slot(s)" in r.getMessage() for r in caplog.records)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(LIMIT)
    assert (limit.limit, limit.active_slots) == (2, 0)
    with pytest.raises(SpecError) as refused:
        check_gpu_slots(with_overrides(spec, {"training": {"resources": {"gpu_count": 3}}}), platform.settings.model_copy(
            update={"gpu_slots": 2}))
    assert "training.resources.gpu_count" in str(refused.value) and "at most 2" in str(refused.value)


def test_stop_kills_running_trials(platform, algorithm, tmp_path, marks):
    from mlyard.flows.tuning import tune
    from mlyard.tunings import get_tuning, list_tunings, stop_tuning

    spec = _spec(algorithm(TRIAL), marks, name="to-stop", max_trials=10, parallel_trials=2,
                 fixed={"sleep": 2, "epochs": 100})
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("state", tune(spec, return_state=True)))
    thread.start()
    tid = None
    deadline = time.monotonic() + 60
    while tid is None and time.monotonic() < deadline:
        found = [t for t in list_tunings(20) if t.name == "to-stop" and t.status == "RUNNING"]
        if found and len(_trials(platform, found[0].id)) == 2:
            tid = found[0].id
        time.sleep(0.3)
    assert tid, "the tuning never ran two trials"
    stop_tuning(tid)
    thread.join(60)
    assert box["state"].is_cancelled() and get_tuning(tid).status == "STOPPED"
    assert {r["state"] for r in _trials(platform, tid)} == {"KILLED"}


def test_unknown_template_is_refused_before_any_trial(platform, tmp_path):
    from mlyard.core.errors import TemplateNotFound
    from mlyard.flows.tuning import tune

    spec = load_spec(TuningSpec, {"name": "tmpl", "template": "no-such-template", "strategy": "random",
                                  "parameters": [{"name": "x", "type": "int", "min": 1, "max": 3}],
                                  "objective": {"metric": "accuracy", "direction": "maximize"}})
    state = tune(spec, return_state=True)
    assert isinstance(state.result(raise_on_failure=False), TemplateNotFound)
    assert _trials(platform, str(state.state_details.flow_run_id)) == []


def _flow_process(flow_run_id: str) -> int | None:
    """The process running the flow run: the child the warm runner forked for it, which names the run in its
    command line (its environment in /proc is the runner's), or a cold one started with the run's id in its
    environment (not mlyard/warm's client, which only relays a warm start)."""
    cold = None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                env = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"(flow run {flow_run_id})".encode() in cmd:
                return int(entry.name)
            if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in env and b"mlyard.warm.client" not in cmd \
                    and b"main.py" not in cmd:
                cold = int(entry.name)
    return cold


def test_crashed_tuning_resumes_when_retried(platform, algorithm, tmp_path, marks):
    """The flow process dies mid-tuning (SIGKILL); retrying the flow run keeps the finished trials."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Scheduled

    from mlyard.tunings import get_tuning

    spec = _spec(algorithm(TRIAL), marks, name="resume", max_trials=5, fixed={"sleep": 0.4, "epochs": 4})
    fr = run_deployment("tune/tune-local", parameters={"spec": spec.model_dump(mode="json")}, timeout=0)
    tid = str(fr.id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = _trials(platform, tid)
        if sum(r["state"] == "SUCCEEDED" for r in rows) >= 2 and any(r["state"] == "RUNNING" for r in rows):
            break
        time.sleep(0.2)
    pid = _flow_process(tid)
    assert pid, f"could not find the tuning's flow process; trials: {_trials(platform, tid)}; {get_tuning(tid)}"
    os.kill(pid, signal.SIGKILL)
    before = {r["number"]: r for r in _trials(platform, tid) if r["state"] == "SUCCEEDED"}
    # Both the runner and the worker report the crash, seconds apart: retry (as the UI's Retry does)
    # once both reports are in, so that a late one cannot override the retry.
    def crash_reports() -> int:
        with get_client(sync_client=True) as client:
            return sum(st.type.value == "CRASHED" for st in client.read_flow_run_states(tid))

    deadline = time.monotonic() + 20
    while crash_reports() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    # its trials that were running end KILLED once the crash is known, without waiting for a retry
    deadline = time.monotonic() + 20
    while running := [r["number"] for r in _trials(platform, tid) if r["state"] == "RUNNING"]:
        assert time.monotonic() < deadline, f"the killed tuning's trials {running} stayed RUNNING"
        time.sleep(0.5)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(tid, Scheduled(), force=True)
    deadline = time.monotonic() + 240
    while not get_tuning(tid).status.startswith(("COMPLETE", "FAIL")) and time.monotonic() < deadline:
        time.sleep(1)
    info = get_tuning(tid)
    assert info.status == "COMPLETE (MaxTrialsReached)", (info, _trials(platform, tid))
    rows = {r["number"]: r for r in _trials(platform, tid)}
    assert len(rows) == 5, rows
    for n, r in before.items():  # finished trials were kept, not run again
        assert rows[n]["state"] == "SUCCEEDED" and rows[n]["run_id"] == r["run_id"]
    killed = [r for r in rows.values() if r["state"] == "KILLED"]
    assert killed and all("interrupted" in r["reason"] for r in killed)
    assert all(platform.tracking.get_run(r["run_id"]).status == "KILLED" for r in killed if r["run_id"])


def test_trials_as_their_own_flow_runs_with_median_stopping(platform, algorithm, tmp_path, marks):
    """trial_deployment: each trial is a flow run of train/train-local (on Kubernetes: train/train-gpu, a pod each)."""
    from mlyard.flows.tuning import tune
    from mlyard.trainings import get_training

    spec = _spec(algorithm(TRIAL), marks, name="remote", max_trials=4, trial_deployment="train/train-local",
                 fixed={"mode": "fourth-is-bad", "epochs": 8, "sleep": 0.2},
                 early_stopping={"min_trials_required": 3, "start_step": 4})
    result = tune(spec)
    rows = sorted(_trials(platform, result.tuning_id), key=lambda r: r["number"])
    assert [r["state"] for r in rows] == ["SUCCEEDED"] * 3 + ["EARLY_STOPPED"]
    from optuna import load_study

    study = load_study(study_name=f"mlyard-tuning-{result.tuning_id}", storage=platform.settings.catalog_db_url)
    flow_runs = [t.user_attrs["flow_run_id"] for t in sorted(study.trials, key=lambda t: t.number)]
    statuses = [get_training(f).status for f in flow_runs]
    assert statuses == ["COMPLETE"] * 3 + ["STOPPED"]
    assert all(get_training(f).work_pool == "local" for f in flow_runs)
    best = platform.tracking.get_run(result.best_run_id)
    assert best.tags["mlflow.parentRunId"] == result.run_id and best.tags["mlyard.training_id"] in flow_runs


CUSTOM = """
import os, sys
x = float(dict(zip(sys.argv[1::2], sys.argv[2::2]))["--x"])
for epoch in (1, 2):
    print(f"epoch {epoch}: ACC IS {0.5 + x / 10 + epoch / 100:.3f}; val loss -> {1 - x / 10:.3f}", flush=True)
open(os.path.join(os.environ["EM_MODEL_DIR"], "m.txt"), "w").write("m")
"""


def test_custom_metric_regexes_reach_each_trials_mlflow_run(platform, algorithm, marks):
    """Trials as processes of the tuning's run: every matched metric is in the trial's own MLflow run."""
    from mlyard.flows.tuning import tune

    spec = _spec(algorithm(CUSTOM), marks, name="regex", strategy="grid", max_trials=2,
                 parameters=[{"name": "x", "type": "int", "min": 1, "max": 2, "step": 1}],
                 metrics=[{"name": "accuracy", "regex": r"ACC IS ([\d.]+)"},
                          {"name": "val_loss", "regex": r"val loss -> (?P<value>[\d.]+)"}])
    result = tune(spec)
    rows = sorted(_trials(platform, result.tuning_id), key=lambda r: r["number"])
    assert [r["state"] for r in rows] == ["SUCCEEDED"] * 2
    run = platform.tracking.get_run(rows[1]["run_id"])
    assert run.metrics["accuracy"] == pytest.approx(0.72) and run.metrics["val_loss"] == pytest.approx(0.8)
    history = platform.tracking.metric_history(rows[1]["run_id"], "accuracy")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([0.71, 0.72])


KATIB_JSON = """
import json, os, sys, time
x = int(dict(zip(sys.argv[1::2], sys.argv[2::2]))["--x"])
for epoch in (1, 2, 3):
    print(json.dumps({"epoch": epoch, "accuracy": str(0.5 + x / 10 + epoch / 100), "timestamp": 1700000000 + epoch}),
          flush=True)
    if x == 2 and epoch == 2:
        print('{"accuracy": 0.9,', flush=True)  # a torn line: Katib's collection fails on it
        time.sleep(30)  # ended by the failed collection long before this
print("done")
open(os.path.join(os.environ["EM_MODEL_DIR"], "m.txt"), "w").write("m")
"""


def test_katib_json_metrics_format(platform, algorithm, marks):
    from mlyard.flows.tuning import tune

    spec = _spec(algorithm(KATIB_JSON), marks, name="json", strategy="grid", max_trials=2,
                 max_failed_trials=2, metrics_format="json",
                 parameters=[{"name": "x", "type": "int", "min": 1, "max": 2, "step": 1}])
    result = tune(spec)
    rows = sorted(_trials(platform, result.tuning_id), key=lambda r: r["number"])
    assert [r["state"] for r in rows] == ["SUCCEEDED", "FAILED"]
    assert rows[0]["value"] == pytest.approx(0.63) and not rows[0]["partial"]
    assert "metrics collection failed: not a JSON object" in rows[1]["reason"]
    assert rows[1]["partial"] and rows[1]["value"] == pytest.approx(0.72), "its last report, marked partial"
    assert result.best_trial == 0
    history = platform.tracking.metric_history(rows[0]["run_id"], "accuracy")
    assert sorted(m.timestamp for m in history) == [1700000001000, 1700000002000, 1700000003000]
