"""MLflow per project, as members meet it on a running stack: each member's runs log to an experiment of
their project (another project's experiment is refused before the run is made), and in the MLflow UI's
server, signed in with their name and API key, each sees their projects' experiments, runs and models
alone; a viewer reads and writes nothing; another project's experiment is refused; the admin sees all."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port
from tests.mlyard.test_prefect_door import call
from tests.mlyard.test_teams import Member
from tests.mlyard.test_workstation import _ok
from tests.test_user_paths import mlyard as owner
from tests.test_user_paths import user_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def mlflow(url: str, path: str, user: str, password: str, body: dict | None = None) -> tuple[int, dict]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body is not None
                                 else None, method="POST" if body is not None else "GET",
                                 headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"text": raw.decode("utf-8", "replace")}


def test_the_mlflow_ui_shows_each_member_their_projects_experiments_and_models_alone(stack, tmp_path):
    from mlyard.core.settings import Settings

    door = Settings().door_url
    keys = {}
    for name, project, role in (("mara", "mlp-a", "editor"), ("nils", "mlp-b", "editor"), ("otto", "mlp-a", "viewer")):
        if role == "editor":
            _ok(owner("projects", "create", project))
            shutil.copytree(EXAMPLES / "sklearn_digits", user_dir() / ".mlyard" / "projects" / project / "algo")
        keys[name] = json.loads(_ok(owner("users", "create", name, "--json")))["key"]
        _ok(owner("projects", "add-member", project, name, "--role", role))
    train = call(f"{door}/api/deployments/filter", "POST", {"flows": {"name": {"any_": ["train"]}},
                                                            "deployments": {"name": {"any_": ["train-local"]}}},
        headers={"Authorization": f"Bearer {keys['mara']}"})[2][0]["id"]

    def start(user: str, project: str, experiment: str) -> tuple[int, dict]:
        status, _, made = call(f"{door}/api/deployments/{train}/create_flow_run", "POST", {
            "state": {"type": "SCHEDULED"}, "parameters": {"spec": {
                "name": f"{user}-train", "experiment": experiment, "source_uri": str(
                    user_dir() / ".mlyard" / "projects" / project / "algo"), "entry_point": "train.py",
                "hyperparameters": {"epochs": 1, "epoch_seconds": 0.01}}}},
            headers={"Authorization": f"Bearer {keys[user]}"})
        return status, made

    runs = {}
    for user, project in (("mara", "mlp-a"), ("nils", "mlp-b")):
        status, runs[user] = start(user, project, f"exp-{project}")
        assert status == 201, runs[user]
    for user in runs:  # each training's experiment is made as its project's
        deadline = time.monotonic() + 300
        while (state := call(f"{door}/api/flow_runs/{runs[user]['id']}",
                             headers={"Authorization": f"Bearer {keys[user]}"})[2]["state_type"]) != "COMPLETED":
            worker = (user_dir() / ".mlyard" / "logs" / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline and state not in ("FAILED", "CRASHED"), (state, worker)
            time.sleep(1)
    status, refused = start("nils", "mlp-b", "exp-mlp-a")  # her project's experiment is not his to log to
    assert status == 409 and "experiment 'exp-mlp-a' belongs to another project" in refused["detail"], refused
    mara = Member(tmp_path / "mara", stack, keys["mara"])
    made = mara.json("models", "create", "mlp-a-model", "--from-training", runs["mara"]["id"][:8])
    assert made["project"] == "mlp-a"

    # the owner opens the MLflow UI from a fresh shell, on a port of its own (the browser tests' worker opens 5000)
    opened = _ok(subprocess.run([str(Path(sys.executable).parent / "mlyard"), "ui", "mlflow"], cwd=user_dir(),
                                capture_output=True, text=True, timeout=300, env={
                                    "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
                                    "MLYARD_MLFLOW_UI_PORT": str(free_port())}))
    url = opened.splitlines()[0].split()[-1]
    signed = re.search(r"sign-in: user (\S+), password (\S+) ", opened)
    assert signed, opened
    admin = signed[1], signed[2]

    def experiments(user: str, password: str) -> dict[str, str]:
        status, found = mlflow(url, "experiments/search", user, password, {"max_results": 1000})
        assert status == 200, found
        return {e["name"]: e["experiment_id"] for e in found.get("experiments", [])}

    everything = experiments(*admin)
    assert {"exp-mlp-a", "exp-mlp-b"} <= set(everything)
    assert set(experiments("mara", keys["mara"])) == {"exp-mlp-a"}
    assert set(experiments("otto", keys["otto"])) == {"exp-mlp-a"}
    assert set(experiments("nils", keys["nils"])) == {"exp-mlp-b"}
    theirs, hers = everything["exp-mlp-b"], everything["exp-mlp-a"]
    status, _ = mlflow(url, f"experiments/get?experiment_id={theirs}", "mara", keys["mara"])
    assert status == 403
    status, found = mlflow(url, "runs/search", "mara", keys["mara"], {"experiment_ids": [theirs]})
    assert status == 403 or not found.get("runs"), found  # refused, or his runs filtered out of the answer
    status, found = mlflow(url, "runs/search", "mara", keys["mara"], {"experiment_ids": [hers]})
    assert status == 200 and len(found["runs"]) == 1
    her_run = found["runs"][0]["info"]["run_id"]
    status, found = mlflow(url, "runs/search", "nils", keys["nils"], {"experiment_ids": [theirs]})
    his_run = found["runs"][0]["info"]["run_id"]
    assert mlflow(url, "runs/set-tag", "mara", keys["mara"], {"run_id": his_run, "key": "x", "value": "y"})[0] == 403
    assert mlflow(url, "runs/set-tag", "otto", keys["otto"], {"run_id": her_run, "key": "x", "value": "y"})[0] == 403
    assert mlflow(url, "runs/set-tag", "mara", keys["mara"], {"run_id": her_run, "key": "x", "value": "y"})[0] == 200

    def models(user: str) -> set[str]:
        status, found = mlflow(url, "registered-models/search?max_results=1000", user, keys[user])
        assert status == 200, found
        return {m["name"] for m in found.get("registered_models", [])}

    assert models("mara") == {"mlp-a-model"} and models("nils") == set()
    # a project's experiments and models are the platform's to make: a member cannot make one in another
    # project's name space (nils pre-made `mlp-a/default` with its artifacts in his storage), rename, or tag
    # one, or write through the artifact proxy; the refusal names no other project's experiment
    for path, body in (("experiments/create", {"name": "mlp-a/default", "artifact_location": str(tmp_path)}),
                       ("experiments/create", {"name": "exp-mlp-a"}),
                       ("experiments/update", {"experiment_id": theirs, "new_name": "mlp-a/stolen"}),
                       ("experiments/set-experiment-tag", {"experiment_id": theirs, "key": "k", "value": "v"}),
                       ("registered-models/create", {"name": "mlp-a-model-2"}),
                       ("registered-models/rename", {"name": "mlp-a-model", "new_name": "mine"})):
        status, answer = mlflow(url, path, "nils", keys["nils"], body)
        assert status == 403 and "exp-mlp-a" not in json.dumps(answer), (path, status, answer)
    put = urllib.request.Request(f"{url}/api/2.0/mlflow-artifacts/artifacts/0/x/model.pkl", data=b"x", method="PUT",
                                 headers={"Authorization": "Basic " + base64.b64encode(
                                     f"nils:{keys['nils']}".encode()).decode()})
    try:
        urllib.request.urlopen(put, timeout=60)
        raise AssertionError("a member wrote through the artifact proxy")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
    assert "mlp-a/default" not in experiments(*admin)
    assert mlflow(url, "experiments/create", *admin, {"name": "made-by-the-admin"})[0] == 200
    assert mlflow(url, "registered-models/get?name=mlp-a-model", "nils", keys["nils"])[0] == 403
    # a wrong key signs nobody in; a revoked one stops at once
    assert mlflow(url, "experiments/search", "mara", "mly_000000000000_" + "A" * 43, {})[0] == 401
    key_id = keys["otto"].split("_")[1]
    _ok(owner("users", "revoke", key_id))
    assert mlflow(url, "experiments/search", "otto", keys["otto"], {})[0] == 401

    # behind the cluster's sign-in (infra/k8s/components/sign-in), the MLflow UI's server started as its pod
    # starts it: oauth2-proxy's headers name the person and their groups, stood in for here by the test, which
    # reaches 127.0.0.1 as the proxy alone does in the pod
    _behind_the_sign_in(tmp_path)


def _behind_the_sign_in(tmp_path: Path) -> None:
    from mlyard.core.settings import Settings
    from mlyard.tasks.processes import stop_group

    settings = Settings()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "MLYARD_HOME": str(
        settings.home_dir), "MLYARD_DOOR_TRUSTED_PROXY": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "pod" / "mlflow-auth.ini")}
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _ok(subprocess.run(
        [sys.executable, "-m", "mlyard.mlflow_ui", "--home", str(tmp_path / "pod")], env=env, capture_output=True,
        text=True, timeout=120)).strip()
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1", "--app-name", "mlyard", "--backend-store-uri",
                               settings.mlflow_uri, "--default-artifact-root", settings.mlflow_artifact_root.as_uri()],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "pod.log", "w"),
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "pod.log").read_text()[-3000:]
                time.sleep(0.5)

        def seen(who: str | None, groups: str = "") -> tuple[int, set[str]]:
            headers = {"Content-Type": "application/json"}
            if who:
                headers.update({"X-Forwarded-Preferred-Username": who, "X-Forwarded-Groups": groups})
            req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search", data=b'{"max_results": 1000}',
                                         headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return resp.status, {e["name"] for e in json.loads(resp.read()).get("experiments", [])}
            except urllib.error.HTTPError as exc:
                return exc.code, set()

        assert seen("mara") == (200, {"exp-mlp-a"})  # her roles here
        assert seen("quinn", "mlyard:mlp-b:viewer,other") == (200, {"exp-mlp-b"})  # a person the groups alone vouch for
        status, everything = seen("quinn", "mlyard:admin")
        assert status == 200 and {"exp-mlp-a", "exp-mlp-b"} <= everything
        assert seen("quinn") == (200, set())  # signed in, in no project: nothing
        assert seen(None)[0] == 401  # nobody named: MLflow's own sign-in, which nobody passes here
    finally:
        stop_group(server.pid, 10)
