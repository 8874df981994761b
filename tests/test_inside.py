"""A member's training script against the running stack, from inside (issue 67): mallory, an editor of her
own project and nothing else, submits tests/inside_attacker.py with her key alone, as any training. The
stack's worker runs it in its sandbox: every file, socket, process, port and credential of the platform and
of the other project that it tries stays out of reach, the links it leaves in its outputs are not followed
(named in the run's log; its MLflow model holds its model alone), and `kill -9` of its flow run's process
leaves nothing of it running. tests/tasks/test_sandbox.py tries the same as root and as an ordinary user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mlyard.tasks import sandbox
from tests.conftest import all_gone, flow_of, marked
from tests.mlyard.test_teams import Member
from tests.mlyard.test_workstation import _ok
from tests.test_user_paths import mlyard as owner

pytestmark = pytest.mark.skipif(sandbox.refusal() is not None, reason=f"no sandbox here: {sandbox.refusal()}")

ATTACKER = Path(__file__).resolve().parent / "inside_attacker.py"
NEEDLES = ["MLYARD_INTERNAL_TOKEN", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "MLYARD_REPLICA_TOKEN",
           "MLFLOW_TRACKING_PASSWORD", "JUPYTER_TOKEN"]


@pytest.fixture(scope="module")
def mallory(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inside")
    for project in ("inside-a", "inside-b"):
        _ok(owner("projects", "create", project))
    made = json.loads(_ok(owner("users", "create", "mallory", "--json")))
    _ok(owner("projects", "add-member", "inside-a", "mallory", "--role", "editor"))
    member = Member(tmp / "mallory", stack, made["key"])
    (member.work / "attack").mkdir()
    shutil.copy(ATTACKER, member.work / "attack" / "main.py")
    return member


def _targets(stack, settings, **more) -> str:
    other = settings.home_dir / "projects" / "inside-b" / "uploads"
    other.mkdir(parents=True, exist_ok=True)
    (other / "documents.txt").write_text("inside-b's own")
    return json.dumps({"home": str(settings.home_dir), "other": str(other), "port": urlsplit(stack.api_url).port,
                       "needles": NEEDLES, "site": next(p for p in sys.path if p.endswith("site-packages")),
                       "source": str(Path(__file__).resolve().parents[1] / "tasks" / "launch.py"), **more})


def _submit(member: Member, name: str, targets: str) -> str:
    (member.work / f"{name}.yaml").write_text(json.dumps({
        "name": name, "source_uri": "attack", "entry_point": "main.py", "hyperparameters": {"targets": targets}}))
    return member.json("train", "-f", f"{name}.yaml")["id"]


def _wait(member: Member, run_id: str, statuses: set[str], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while (status := member.json("trainings", "show", run_id)["status"]) not in statuses:
        assert time.monotonic() < deadline, status
        time.sleep(1)
    return status


def test_a_members_script_reaches_nothing_of_the_platform(mallory, stack, settings, platform):
    run_id = _submit(mallory, "attack", _targets(stack, settings))
    assert _wait(mallory, run_id, {"COMPLETE", "FAIL TRAIN"}) == "COMPLETE"
    lines = [json.loads(line)["body"] for line in _ok(owner("logs", "--training", run_id, "--json")).splitlines()]
    found = json.loads(next(b for b in lines if b.startswith("FOUND ")).removeprefix("FOUND "))
    reached = {name: got for name, got in found["attempts"].items() if not got.startswith("held")}
    assert not reached, reached
    assert len(found["attempts"]) == 14 and set(found["own"].values()) == {"ok"}, found
    assert not any("no sandbox" in b for b in lines)

    # the links it left are named in the run's log and copied nowhere: its MLflow model is its model alone
    for name in ("stolen-record", "stolen-project", "hold-the-reader"):
        assert any(b.startswith("left out of model: " + name) for b in lines), (name, lines[-20:])
    assert any(b.startswith("left out of checkpoints: stolen-record") for b in lines)
    run = platform.tracking.find_training_run(run_id)
    listed = [a.path for a in platform.tracking.client.list_artifacts(run.run_id, "model")]
    assert listed == ["model/model.txt"], listed


def test_kill_9_of_its_flow_leaves_nothing_of_it_running(mallory, stack, settings):
    marker = f"mark-{uuid.uuid4().hex}"
    run_id = _submit(mallory, "linger", _targets(stack, settings, linger=True, marker=marker))
    deadline = time.monotonic() + 120
    while not marked(marker):  # the script's child, its command line holding the marker
        assert time.monotonic() < deadline, "the script never started"
        time.sleep(0.3)
    import psutil

    child = psutil.Process(marked(marker)[0])
    ancestors = child.parents()  # the script, bubblewrap's two processes, the flow run's, the worker...
    assert "bwrap" in [p.name() for p in ancestors], "the script runs in its sandbox"
    flow = psutil.Process(flow_of(child.pid))
    os.kill(flow.pid, signal.SIGKILL)
    assert all_gone(marker, within=10), "the script's child outlived its flow"
    inside = ancestors[:ancestors.index(flow)]  # the script and bubblewrap's processes
    _, alive = psutil.wait_procs(inside, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    owner("trainings", "stop", run_id)


MODEL = Path(__file__).resolve().parent / "inside_model.py"


def _local(source: str) -> str:
    from mlyard.tasks.served import local_source

    return str(local_source(source))


def test_a_members_model_reaches_nothing_of_the_platform_from_its_replica(mallory, stack, settings, platform):
    """mallory's training saves tests/inside_model.py as her model; she registers it and deploys it on two
    replicas of her own endpoint, then asks it to predict: inside its replica's sandbox it makes every attempt
    of tests/inside_attacker.py (its own replica credential tried on its neighbour and on the gateway's
    management routes, a platform port without one), and answers what it reached: nothing."""
    import urllib.request

    from mlyard.core.connection import gateway_url
    from mlyard.tasks import compiled
    from mlyard.tasks import replicas as files
    from tests.mlyard.test_teams import _until_active

    source = mallory.work / "model-attack"
    source.mkdir()
    for file in (MODEL, ATTACKER):
        shutil.copy(file, source / file.name)
    (mallory.work / "make-model.yaml").write_text(json.dumps({
        "name": "make-model", "source_uri": "model-attack", "entry_point": "inside_model.py"}))
    run_id = mallory.json("train", "-f", "make-model.yaml")["id"]
    assert _wait(mallory, run_id, {"COMPLETE", "FAIL TRAIN"}) == "COMPLETE"
    mallory.json("models", "create", "inside-atk", "--from-training", run_id[:8])
    (mallory.work / "ep.yaml").write_text("name: inside-atk\nstage:\n  resources:\n    - model: inside-atk/1\n"
                                          "      pods: 2\n")
    mallory.json("endpoints", "create", "-f", "ep.yaml")
    _until_active(mallory, "inside-atk")

    keys = {k: st.port for k, st in files.states(settings.home_dir).items() if k.startswith("inside-atk.")}
    assert len(keys) == 2, keys
    targets = json.loads(_targets(stack, settings))
    targets.update(needles=[n for n in NEEDLES if n != "MLYARD_REPLICA_TOKEN"],  # its own credential is its own
                   replicas=keys, gateway=urlsplit(gateway_url(settings)).port, cache=str(compiled.cache_root()),
                   service=urlsplit(stack.service_url).port,
                   own_files=[str(settings.home_dir / "endpoints" / "logs" / "inside-atk.jsonl"),
                              _local(platform.models.get_version("inside-atk", "1").source)],
                   forge={"log": str(settings.home_dir / "endpoints" / "logs" / "inside-atk.jsonl"),
                          "project": "inside-b", "body": f"forged-{uuid.uuid4().hex[:8]}"})
    url = f"{gateway_url(settings)}/inside-atk/inside-atk/v1/models/inside-atk:predict"
    req = urllib.request.Request(url, data=json.dumps({"instances": [{"targets": json.dumps(targets)}]}).encode(),
                                 headers={"Authorization": f"Bearer {mallory.key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        found = json.loads(json.loads(resp.read())["predictions"][0])
    reached = {name: got for name, got in found.items() if not got.startswith("held")}
    assert not reached, reached
    assert len(found) == 15, found
    # what it writes into its endpoint's inference log is its endpoint's and its project's, whatever it says
    from mlyard.logs import store

    logs = store(settings.home_dir)
    logs.catch_up()
    forged = targets["forge"]["body"]
    assert not [r for r in logs.query(projects=["inside-b"], limit=1000) if r["body"] == forged]
    (mine,) = [r for r in logs.query(projects=["inside-a"], limit=1000) if r["body"] == forged]
    assert mine["endpointId"] == str(mallory.json("endpoints", "show", "inside-atk")["id"]), mine
    # each replica is bubblewrap's: its whole sandbox dies with the supervisor that started it (kill -9), and
    # the stack's keeper starts the supervisor again, which starts the replicas again
    import psutil

    from mlyard.core.connection import read_state
    from mlyard.tasks.processes import alive

    sandboxes = [psutil.Process(files.states(settings.home_dir)[key].pid) for key in keys]
    assert {p.name() for p in sandboxes} == {"bwrap"}
    inside = [q for p in sandboxes for q in (p, *p.children(recursive=True))]
    supervisor = read_state(settings).pids["replicas"]
    os.kill(supervisor, signal.SIGKILL)
    _, left = psutil.wait_procs(inside, timeout=10)
    assert not [p for p in left if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline()[:3] for p in left]
    deadline = time.monotonic() + 60
    while not (read_state(settings).pids["replicas"] != supervisor and alive(read_state(settings).pids["replicas"])
               and all(st.pid and alive(st.pid) for k, st in files.states(settings.home_dir).items() if k in keys)):
        assert time.monotonic() < deadline, "the keeper did not bring the supervisor and its replicas back"
        time.sleep(0.5)
    _ok(owner("endpoints", "delete", "inside-atk"))  # deleting needs the project's owner


ENTRY_ATTACK = """
import json, os, sys
import inside_attacker, mlyardprobe  # the second only in the environment its deployment names

def run(raw):
    found = inside_attacker.attempts({**json.loads(raw), "mine": os.getcwd()}, replica=True)
    return {"found": found, "probe": mlyardprobe.VALUE, "python": sys.executable}
"""


def test_a_members_entry_script_runs_in_its_own_environment_and_reaches_nothing(mallory, stack, settings):
    """mallory pushes an Azure ML entry script whose requirements.txt names a package of its own: the endpoint's
    flow builds that environment (its packages alone), and the replica runs the script in it, in a process of
    its own beside mlyard's server. From there it makes every attempt of tests/inside_attacker.py, its
    server's replica credential among the needles (the script holds none), and writing the environment it
    runs in (the next replica's): nothing is reached."""
    import urllib.request

    from serving_http import probe_wheel

    from mlyard.core.connection import gateway_url
    from mlyard.tasks import replicas as files

    folder = mallory.work / "entry-attack"
    (folder / "wheels").mkdir(parents=True)
    shutil.copy(ATTACKER, folder / "inside_attacker.py")
    (folder / "score.py").write_text(ENTRY_ATTACK)
    wheel = probe_wheel(folder / "wheels")
    (folder / "requirements.txt").write_text(f"./wheels/{wheel.name}\n")
    shown = mallory.json("endpoints", "deploy", "inside-entry", "--sync", str(folder))
    assert shown["status"] == "ACTIVE", shown
    (wanted,) = files.of_stage(settings.home_dir, "inside-entry", "default")
    environment = next(r for r in wanted.reads if r.startswith(str(settings.envs_dir)))
    targets = json.loads(_targets(stack, settings))
    targets.update(gateway=urlsplit(gateway_url(settings)).port, service=urlsplit(stack.service_url).port,
                   own_files=list(wanted.reads), environment=True)
    url = f"{gateway_url(settings)}/inside-entry/inside-entry/score"
    req = urllib.request.Request(url, data=json.dumps(targets).encode(),
                                 headers={"Authorization": f"Bearer {mallory.key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.loads(resp.read())
    assert answer["probe"] == 42 and answer["python"].startswith(environment + "/"), (answer["python"], environment)
    found = answer["found"]
    reached = {name: got for name, got in found.items() if not got.startswith("held")}
    assert not reached, reached
    assert len(found) == 14, found
    _ok(owner("endpoints", "delete", "inside-entry"))


PICKLER = '''import json, os, pickle
target = json.loads(os.environ["EM_HP_TARGETS"])["marker"]
class Evil:
    def __reduce__(self):
        return (exec, (f"open({target!r}, 'w').write('ran where the platform runs')",))
with open(os.path.join(os.environ["EM_MODEL_DIR"], "model.joblib"), "wb") as fh:
    pickle.dump(Evil(), fh)
'''


def test_registering_a_members_pickle_runs_its_code_in_a_sandbox_only(mallory, stack, settings, platform):
    """A pickle runs what it names as it loads: mallory's training saves one that writes into the stack's home.
    Registering it (which reads a signature off the estimator and compiles it for serving) loads it in a
    sandbox that sees its files alone: the version is registered, not prepared, and nothing is written."""
    marker = settings.home_dir / f"pickle-ran-{uuid.uuid4().hex[:8]}"
    (mallory.work / "pickler").mkdir()
    (mallory.work / "pickler" / "main.py").write_text(PICKLER)
    (mallory.work / "pickler.yaml").write_text(json.dumps({
        "name": "pickler", "source_uri": "pickler", "entry_point": "main.py",
        "hyperparameters": {"targets": json.dumps({"marker": str(marker)})}}))
    run_id = mallory.json("train", "-f", "pickler.yaml")["id"]
    assert _wait(mallory, run_id, {"COMPLETE", "FAIL TRAIN"}) == "COMPLETE"
    made = mallory.json("models", "create", "inside-pickle", "--from-training", run_id[:8])
    assert made["version"] in ("1", 1), made
    assert not marker.exists(), "the pickle's code ran in the platform's process"
    version = platform.models.get_version("inside-pickle", "1")
    assert version.runtime.startswith(("scikit-learn (not compiled", "not prepared")), version.runtime


def test_a_members_model_in_a_batch_inference_reaches_nothing_of_the_platform(mallory, stack, settings, platform):
    """mallory's model of the test above (registered there) scores her batch inference: each batch is
    predicted in the model's sandbox (tasks/model_host.py), where the same attempts are made, outside the
    worker that holds the run's storage: nothing is reached, and the answers come back as her output."""
    from mlyard.tasks.served import local_source

    storage = mallory.json("projects", "show", "inside-a")["storage"]
    data = mallory.work / "batch-data"
    data.mkdir()
    targets = json.loads(_targets(stack, settings))
    targets.update(needles=NEEDLES, service=urlsplit(stack.service_url).port,
                   own_files=[str(local_source(platform.models.get_version("inside-atk", "1").source)),
                              str(settings.home_dir / "runs"), str(settings.home_dir / "batch")])
    (data / "rows.jsonl").write_text(json.dumps({"targets": json.dumps(targets)}) + "\n")
    (mallory.work / "batch.yaml").write_text(json.dumps({
        "name": "inside-batch", "model": "inside-atk/1", "input_uri": "batch-data", "input_format": "jsonl",
        "output_uri": f"{storage}outputs/inside-batch", "workers": 1}))
    queued = mallory.json("batch", "-f", "batch.yaml")
    deadline = time.monotonic() + 240
    while (status := mallory.json("batches", "show", queued["id"])["status"]) != "COMPLETE":
        assert time.monotonic() < deadline and "FAIL" not in status, status
        time.sleep(1)
    out = Path(storage.removeprefix("file://")) / "outputs" / "inside-batch"
    (line,) = [json.loads(x) for f in out.rglob("*.predictions.jsonl") for x in f.read_text().splitlines() if x.strip()]
    found = json.loads(line["prediction"])
    reached = {name: got for name, got in found.items() if not got.startswith("held")}
    assert not reached, reached
    assert len(found) == 13, found
