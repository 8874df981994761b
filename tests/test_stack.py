"""The embedded stack as a user drives it: deployments run by the worker, and the CLI.

The CLI runs in process here (typer's CliRunner): what these tests check is what the commands do on
the stack, which a subprocess with the harness's environment would not prove better. The user's own
path (a fresh process, a shell's environment, found through ./.mlyard) is tests/test_user_paths.py.
"""

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from uuid import UUID

import pytest

from tests.conftest import all_gone

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"



def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    from typer.testing import CliRunner

    from mlyard.cli import app

    res = CliRunner().invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    proc = subprocess.CompletedProcess(["mlyard", *args], res.exit_code, res.stdout, res.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlyard {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _wait_status(training_id: str, wanted: set[str], timeout: float = 180):
    from mlyard.trainings import get_training

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = get_training(training_id)
        if info.status in wanted:
            return info
        time.sleep(0.5)
    raise AssertionError(f"training {training_id} stayed {info.status}, expected one of {wanted}")


def test_status_shows_urls(stack):
    info = json.loads(cli("status", "--json").stdout)
    assert info["running"] is True and info["prefect_ui"] == stack.ui_url
    assert info["processes"]["worker"]["alive"] and info["mlflow_tracking_uri"].startswith("sqlite:///")
    assert info["processes"]["mlyard-api"]["alive"] and info["mlyard_api"] == stack.service_url
    assert info["user_code"] == "in a sandbox (bubblewrap; MLYARD_SANDBOX=auto)", info["user_code"]


def test_the_kubernetes_pools_deployments_say_why_they_are_not_ready_here(stack):
    """No worker serves the gpu and cpu pools on one machine: where they are registered here
    (MLYARD_CLUSTER_POOLS, as the test stack does) the Prefect UI lists their deployments Not Ready, and
    their descriptions say why and what to use (the production registration says nothing of it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
    kube = [d for d in deployments if d.work_pool_name in ("gpu", "cpu")]
    assert kube and all(f"no worker serves the {d.work_pool_name} pool" in (d.description or "") for d in kube)
    assert all("no worker serves" not in (d.description or "") for d in deployments if d.work_pool_name == "local")


def test_the_deployments_list_says_what_each_one_does(stack):
    """The Prefect UI titles each row of its Deployments page with the deployment's name: each says its flow and
    where it runs (`train-local`, `evaluate-gpu`), never the pool's name alone as 19 rows once did (`local`). The
    train deployment's Run form starts from the example a newcomer runs first, its hyperparameters as pairs."""
    from prefect.client.orchestration import get_client

    from mlyard.core.names import PLACES, current_deployment
    from mlyard.core.specs import TrainingSpec, load_spec

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        deployments = client.read_deployments()
    names = [d.name for d in deployments]
    assert len(names) >= 19 and len(set(names)) == len(names) and not set(names) & set(PLACES), names
    assert all(d.name in (f"{flows[d.flow_id]}-{p}" for p in PLACES) for d in deployments), names
    train = next(d for d in deployments if d.name == "train-local")
    assert train.parameters["spec"]["hyperparameters"][0] == {"key": "epochs", "value": "3"}, train.parameters
    example = load_spec(TrainingSpec, train.parameters["spec"])
    assert example.name == "digits-sgd" and example.source_uri == str(EXAMPLES / "sklearn_digits"), example
    # the names of before, which scripts and saved schedules may hold, are the ones named so now
    assert current_deployment("train/local") == "train/train-local" == current_deployment("train/train-local")
    assert current_deployment("scheduler/kubernetes") == "scheduler/scheduler-kubernetes"


def test_deployments_named_as_an_older_mlyard_named_them_are_withdrawn(stack):
    """`mlyard up` over a home an older mlyard made registers the deployments under their names now and
    withdraws those it finds under the names of before (a pool's name), so the list holds each once."""
    from prefect.client.orchestration import get_client

    from mlyard.core.names import PLACES
    from mlyard.prefect_setup import withdraw_deployments

    with get_client(sync_client=True) as client:
        now = client.read_deployment_by_name("rag-sync/rag-sync-local")
        client.create_deployment(flow_id=now.flow_id, name="local", work_pool_name="local", entrypoint=now.entrypoint)
        assert withdraw_deployments(("local", "gpu", "cpu"), named=PLACES) == 1
        assert all(d.name not in PLACES for d in client.read_deployments())
        assert client.read_deployment_by_name("rag-sync/rag-sync-local").id == now.id


def test_the_home_and_what_the_stack_writes_are_its_users_alone(stack, settings):
    """Another user of the machine reads no spec, parameter or prediction, and cannot ask the mlyard API."""
    import stat
    import urllib.error
    import urllib.request

    home = settings.home_dir
    pg_user = (home / "postgres").stat().st_uid != os.geteuid()  # root: PostgreSQL's own user needs to pass
    assert stat.S_IMODE(home.stat().st_mode) == (0o711 if pg_user else 0o700)
    assert stat.S_IMODE(settings.stack_file.stat().st_mode) == 0o600
    for entry in home.iterdir():  # every folder 0700 and file 0600: nothing to read, list or pass through
        if entry.name != "postgres":
            assert stat.S_IMODE(entry.stat().st_mode) & 0o077 == 0, (entry.name, oct(entry.stat().st_mode))
    assert stat.S_IMODE((home / "postgres").stat().st_mode) & 0o077 == 0
    # the mlyard API: the platform's own clients only (the CLI shows the credential of stack.json)
    for path in ("/v1/queries/trainings_list", "/v1/runs"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(stack.service_url + path, data=b"{}", method="POST"), timeout=10)
        assert refused.value.code == 401, path
    assert urllib.request.urlopen(stack.service_url + "/health", timeout=10).status == 200


def test_a_second_up_waits_for_the_one_under_way_then_finds_everything_up(stack, settings):
    """Two `mlyard up` on one home at once (two terminals, a script and a person) run one after the other:
    the second would otherwise start what the first is starting (the embedded PostgreSQL once failed so,
    the home made private again under it while its own user initialised its folder)."""
    import fcntl
    import threading

    from mlyard import stack as stack_mod
    from mlyard.core.connection import read_state

    before = read_state(settings).pids
    result: dict = {}
    second = threading.Thread(target=lambda: result.update(state=stack_mod.up(settings, echo=lambda *_: None)))
    fd = os.open(settings.home_dir / "stack.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an `up` under way
        second.start()
        second.join(1.5)
        assert second.is_alive(), "the second up did not wait for the one under way"
    finally:
        os.close(fd)
    second.join(60)
    assert not second.is_alive()
    # it started nothing: every part is the process it was (the warm runner aside: it restarts on its own
    # when the code it imported changes, test_warm.py)
    parts = ("prefect-server", "worker", "mlyard-api", "gateway", "replicas", "scheduler", "postgres")
    assert [result["state"].pids[p] for p in parts] == [before[p] for p in parts]


def test_a_fresh_home_starts_from_the_installations_prepared_database(stack):
    """`make install` prepared a Prefect database holding the pools, the crash automation and the local
    deployments of this checkout; the test stack's fresh home started from it, so `up` registered only the
    Kubernetes pools' deployments the test stack asks for (MLYARD_CLUSTER_POOLS)."""
    import sqlite3

    from mlyard.core.settings import DEFAULT_IMAGE
    from mlyard.prefect_setup import CLUSTER_POOLS, deployments_digest, prepared_db_path

    digest = deployments_digest(DEFAULT_IMAGE)
    assert prepared_db_path(digest).is_file() and stack.deployments == f"{digest}+{CLUSTER_POOLS}"
    # what a new home lists on the Prefect UI's Deployments page: the local deployments alone, which run
    # here (the page sorts by name: the Not Ready "cpu" and "gpu" ones came first, issue 52)
    db = sqlite3.connect(f"file:{prepared_db_path(digest)}?mode=ro", uri=True)
    try:
        pools = db.execute("SELECT w.name, count(*) FROM deployment d JOIN work_pool w ON w.id = "
                           "(SELECT work_pool_id FROM work_queue q WHERE q.id = d.work_queue_id) GROUP BY w.name").fetchall()
    finally:
        db.close()
    assert dict(pools).keys() == {"local"} and dict(pools)["local"] >= 10, pools


def test_prefect_ui_talks_to_this_server(stack):
    """The UI (served on a non-default port here) must call this server's API, not port 4200's."""
    import urllib.request

    with urllib.request.urlopen(f"{stack.ui_url}/ui-settings", timeout=10) as resp:
        assert json.loads(resp.read())["api_url"] == stack.api_url


def test_with_an_auth_string_prefects_api_answers_only_the_platform(stack, settings):
    """MLYARD_PREFECT_AUTH (on in these tests): a request without the string gets 401 (another local
    user's), health probes stay open, and the string is in stack.json alone (mode 0600); every other
    test's CLI, worker and flow runs pass with it."""
    import base64
    import stat
    import urllib.error
    import urllib.request

    assert stack.prefect_auth_string and stack.prefect_auth_string.startswith("mlyard:")
    assert stat.S_IMODE(settings.stack_file.stat().st_mode) == 0o600
    request = urllib.request.Request(f"{stack.api_url}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    with urllib.request.urlopen(f"{stack.api_url}/health", timeout=10) as resp:
        assert resp.status == 200
    token = base64.b64encode(stack.prefect_auth_string.encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def test_run_button_path_trains_on_the_local_pool(platform):
    """What pressing Run on the deployment does: a flow run the worker picks up and executes."""
    from prefect.deployments import run_deployment

    spec = {"name": "from-ui", "experiment": "stack-tests", "source_uri": str(EXAMPLES / "sklearn_digits"),
            "entry_point": "train.py", "hyperparameters": {"epochs": 2}}
    fr = run_deployment("train/train-local", parameters={"spec": spec}, timeout=240)
    assert fr.state.is_completed(), fr.state.message
    assert fr.name == "from-ui", "a run made without a name (the UI's Run) is named after its spec when it starts"
    info = _wait_status(str(fr.id), {"COMPLETE"})
    assert info.work_pool == "local"

    # the CLI sees it, and its model goes into the registry
    listed = json.loads(cli("trainings", "list", "--json").stdout)
    assert any(t["id"] == str(fr.id) and t["status"] == "COMPLETE" for t in listed)
    mv = json.loads(cli("models", "create", "digits-ui", "--from-training", str(fr.id), "--param", "top_k=3",
                        "--alias", "champion", "--json").stdout)
    assert mv["framework"] == "sklearn" and mv["parameters"] == {"top_k": "3"} and mv["aliases"] == ["champion"]
    assert mv["lineage"]["training_id"] == str(fr.id)
    shown = json.loads(cli("models", "show", "digits-ui@champion", "--json").stdout)
    assert shown["version"] == mv["version"]
    exps = json.loads(cli("experiments", "list", "--json").stdout)
    assert any(e["name"] == "stack-tests" and e["trainings"] >= 1 for e in exps)


def test_stop_a_training_running_on_the_worker(platform, algorithm, tmp_path):
    script = algorithm("import os, subprocess, sys, time\n"
                       "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', "
                       "os.environ['EM_HP_MARKER']])\n"
                       "print('loss=1', flush=True)\ntime.sleep(300)\n")
    marker = f"mark-{uuid.uuid4().hex}"  # the child's command line holds it: looked for from outside its sandbox
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "worker-stop", "experiment": "stack-tests", "source_uri": str(script),
                                "entry_point": "main.py", "hyperparameters": {"marker": marker}}))
    submitted = json.loads(cli("train", "-f", str(spec), "--submit", "--json").stdout)
    tid = submitted["id"]
    assert submitted["flow_run"] == "worker-stop", "the name printed at creation is the run's final name"
    _wait_status(tid, {"RUNNING"})
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(UUID(tid)).name == "worker-stop", "and it keeps it once it runs"
    assert json.loads(cli("trainings", "stop", tid, "--json").stdout)["status"] in ("STOP IN PROGRESS", "STOPPED")
    info = _wait_status(tid, {"STOPPED"}, timeout=90)
    assert info.status == "STOPPED"
    assert all_gone(marker, 30), "the script's child outlived the stop"

    # experiments with running work cannot be deleted; once stopped they can
    cli("experiments", "delete", "stack-tests")


def test_cli_copy_and_templates(platform, algorithm, tmp_path):
    # templates and copies carry a spec, whatever its script does: a script that reports its metric and its
    # epochs (the digits example costs 9 CPU-seconds a run; test_run_button_path_trains_on_the_local_pool and
    # the users' paths run it)
    algo = algorithm("import sys\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
                     "print(f'epochs={args[\"--epochs\"]} accuracy=0.9', flush=True)\n", entry="train.py")
    spec = tmp_path / "t.yaml"
    spec.write_text(f"name: tmpl-run\nexperiment: cli-tests\nsource_uri: {algo}\n"
                    "entry_point: train.py\nhyperparameters: {epochs: 1}\n")
    cli("templates", "create", "digits-quick", "-f", str(spec))
    assert "epochs: 1" in cli("templates", "show", "digits-quick").stdout
    out = json.loads(cli("train", "--template", "digits-quick", "--set", "hyperparameters.epochs=2", "--json").stdout)
    assert out["metrics"]["accuracy"] > 0.5 and out["metrics"]["epochs"] == 2  # the template, with the override
    copied = json.loads(cli("trainings", "copy", out["training_id"], "--name", "copied", "--set",
                            "hyperparameters.epochs=1", "--json").stdout)
    from mlyard.trainings import get_training

    info = get_training(copied["training_id"])
    assert info.name == "copied" and info.spec["hyperparameters"]["epochs"] == 1 and info.status == "COMPLETE"


@pytest.mark.parametrize("content, words", [
    ("name: Bad\nsource_uri: x\nentry_point: a.py\n", "name:"),
    ("name: ok\nsource_uri: /no/such/dir\nentry_point: a.py\n", "source_uri: '/no/such/dir'"),
    ("name: ok\nsource_uri: s3://b/x\nentry_point: a.py\nepochs: 3\n", "epochs: unknown field"),
])
def test_cli_bad_spec_is_refused_before_anything_runs(platform, tmp_path, content, words):
    from mlyard.trainings import list_trainings

    name = content.split("\n", 1)[0].removeprefix("name: ")
    before = {t.id for t in list_trainings(200)}
    spec = tmp_path / "bad.yaml"
    spec.write_text(content)
    proc = cli("train", "-f", str(spec), check=False)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    # nothing made: no new training of the refused spec's name (the only one it could have made; trainings
    # that a schedule left by an earlier test starts may come meanwhile)
    assert not [t for t in list_trainings(200) if t.id not in before and t.name == name]


def test_cli_errors_name_the_thing(platform):
    proc = cli("trainings", "show", "00000000-0000-0000-0000-000000000000", check=False)
    assert proc.returncode == 2 and "training '00000000-0000-0000-0000-000000000000' not found" in proc.stderr
    proc = cli("models", "delete", "no-such-model", check=False)
    assert proc.returncode == 2 and "model 'no-such-model' not found" in proc.stderr


def test_cli_tuning_and_model_from_its_best_trial(platform, tmp_path):
    spec = tmp_path / "tune.yaml"
    spec.write_text(f"""
name: cli-tune
training: {{name: x, experiment: cli-tests, source_uri: {EXAMPLES / 'sklearn_digits'}, entry_point: train.py,
            hyperparameters: {{epochs: 2}}}}
strategy: random
seed: 3
parameters: [{{name: learning_rate, type: double, min: 0.005, max: 0.05}}]
objective: {{metric: accuracy, direction: maximize}}
max_trials: 2
parallel_trials: 2
""")
    out = json.loads(cli("tune", "-f", str(spec), "--json").stdout)
    assert out["status"] == "COMPLETE (MaxTrialsReached)" and out["reason"] == "MaxTrialsReached" and out["counts"]["succeeded"] == 2
    tid = out["tuning_id"]
    assert any(t["id"] == tid and t["status"] == "COMPLETE (MaxTrialsReached)"
               for t in json.loads(cli("tunings", "list", "--json").stdout))
    trials = json.loads(cli("tunings", "trials", tid, "--json").stdout)
    assert [t["state"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"]
    shown = json.loads(cli("tunings", "show", tid, "--json").stdout)
    assert shown["trials"] == {"SUCCEEDED": 2} and shown["best_trial"]["run_id"] == out["best_run_id"]
    mv = json.loads(cli("models", "create", "digits-tuned-cli", "--from-tuning", tid, "--json").stdout)
    assert mv["run_id"] == out["best_run_id"] and mv["lineage"]["tuning_id"] == tid and mv["framework"] == "sklearn"


def test_cli_bad_tuning_spec_is_refused(platform, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ntemplate: t\nstrategy: grid\nparameters: [{name: lr, type: double, min: 0.1, max: 0.5}]\n"
                    "objective: {metric: accuracy, direction: maximize}\n")
    proc = cli("tune", "-f", str(spec), check=False)
    assert proc.returncode == 2 and "grid needs a step" in proc.stderr


def test_a_part_that_dies_is_restarted_within_seconds_and_the_log_says_so(stack, settings):
    """kill -9 of the gateway, the mlyard API and the scheduler: the stack's keeper starts each again
    within 5 s (a new pid in stack.json, answering), and says so in its log; the stack was never `up` again."""
    import os
    import signal

    from mlyard.core.connection import healthy, read_state
    from mlyard.tasks.processes import alive

    before = read_state(settings)
    assert before is not None and alive(before.pids.get("keeper")), "up started no keeper"
    victims = ("gateway", "mlyard-api", "scheduler")
    for name in victims:
        os.kill(before.pids[name], signal.SIGKILL)
    killed = time.monotonic()
    while True:
        now = read_state(settings)
        moved = {n: now.pids[n] for n in victims if now.pids[n] != before.pids[n] and alive(now.pids[n])}
        if len(moved) == len(victims):
            break
        assert time.monotonic() - killed < 5.0, f"not restarted within 5 s: {set(victims) - set(moved)}"
        time.sleep(0.1)
    deadline = time.monotonic() + 60
    while not (healthy(now.gateway_url + "/mlyard") and healthy(now.service_url)):
        assert time.monotonic() < deadline, "the restarted gateway and API do not answer"
        time.sleep(0.2)
    log = Path(now.logs["keeper"]).read_text()
    assert "restarting what died" in log and all(name in log for name in victims), log[-2000:]
    assert now.pids["prefect-server"] == before.pids["prefect-server"], "a part that lived was restarted"


def test_a_killed_keeper_is_started_again_and_then_restarts_a_killed_gateway(stack, settings):
    """kill -9 of the keeper, then of the gateway: nothing restarted the keeper, so the gateway stayed down.
    The mlyard API starts the keeper again within seconds (its log says so), and the keeper the gateway."""
    import os
    import signal

    from mlyard.core.connection import healthy, read_state
    from mlyard.tasks.processes import alive

    before = read_state(settings)
    os.kill(before.pids["keeper"], signal.SIGKILL)
    os.kill(before.pids["gateway"], signal.SIGKILL)
    killed = time.monotonic()
    while True:
        now = read_state(settings)
        if all(now.pids[n] != before.pids[n] and alive(now.pids[n]) for n in ("keeper", "gateway")):
            break
        assert time.monotonic() - killed < 20.0, "the keeper and the gateway are not back within 20 s"
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    while not healthy(now.gateway_url + "/mlyard"):
        assert time.monotonic() < deadline, "the restarted gateway does not answer"
        time.sleep(0.2)
    said = Path(now.logs["keeper"]).read_text()
    assert f"the stack's keeper (pid {before.pids['keeper']}) is gone" in said, said[-2000:]


def test_every_process_of_the_stack_keeps_its_environment_to_itself(stack, settings):
    """The stack's processes hold the platform's credentials in their environments: each is non-dumpable, so
    a process of the same user without CAP_SYS_PTRACE (a member's code the stack runs unsandboxed, a script of
    a stack run as an ordinary user) cannot read their /proc/PID/environ. Tried by a process of the same user
    with every capability dropped; the same reader gets its own environment."""
    import os

    from mlyard import warm
    from mlyard.core.connection import read_state

    state = read_state(settings)
    parts = {name: pid for name, pid in state.pids.items() if name != "postgres"}
    parts["warm-runner"] = warm.runner_pid(settings.home_dir)
    import sys

    reader = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--", sys.executable, "-I", "-c",
              "import sys\ntry:\n    open(sys.argv[1], 'rb').read(1)\n    print('read')\n"
              "except OSError as exc:\n    print(type(exc).__name__)"]
    if os.geteuid() != 0:
        reader = reader[5:]  # an ordinary user has no capability to drop
    seen = {name: subprocess.run([*reader, f"/proc/{pid}/environ"], capture_output=True, text=True,
                                 timeout=30).stdout.strip() for name, pid in parts.items()}
    assert set(seen.values()) == {"PermissionError"}, seen
    assert subprocess.run([*reader, "/proc/self/environ"], capture_output=True, text=True).stdout.strip() == "read"


def test_a_gateway_that_has_not_read_its_table_yet_says_503_for_any_endpoint(tmp_path):
    """While the gateway starts (restarted by the keeper), an endpoint it does not know yet may well exist:
    503 with Retry-After, not 404."""
    from mlyard.serving.access import unknown_endpoint
    from mlyard.serving.gateway import Gateway
    from mlyard.serving.routing import parse

    gw = Gateway(tmp_path, None)
    assert gw.admit("POST", "/digits/digits/v1/models/digits:predict", [])[0] == 503
    status, _, headers = unknown_endpoint(parse("/digits/digits/v1/models/digits:predict"), gw.shared.loaded)
    assert status == 503 and (b"retry-after", b"1") in headers
    gw.shared.loaded = True
    assert gw.admit("POST", "/digits/digits/v1/models/digits:predict", [])[0] == 404


def test_the_mlyard_apis_docs_open_for_its_owner_in_a_browser_and_call_nothing(stack):
    """`mlyard status` gives the API's docs with the page key: the page and the OpenAPI document it loads
    (with the cookie the page set) open; nothing else does, and without the key the docs stay shut."""
    import http.cookiejar
    import urllib.error
    import urllib.request

    docs = json.loads(cli("status", "--json").stdout)["mlyard_api_docs"]
    base = docs.split("/docs")[0]
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with browser.open(docs, timeout=10) as resp:
        assert resp.status == 200 and b"swagger" in resp.read().lower()
    with browser.open(f"{base}/openapi.json", timeout=10) as resp:
        assert "/v1/runs" in json.loads(resp.read())["paths"]
    for shut in (f"{base}/docs", f"{base}/openapi.json"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(shut, timeout=10)
        assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as refused:  # the page's cookie runs nothing
        browser.open(urllib.request.Request(f"{base}/v1/runs", data=b"{}", method="POST",
                                            headers={"content-type": "application/json"}), timeout=10)
    assert refused.value.code == 401
