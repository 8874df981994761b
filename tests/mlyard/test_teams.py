"""Two projects on one running stack, as their members meet it: the stack's owner (an admin, signed in by
owning the home) makes the projects and users; each user then works in fresh processes that hold only
their API key and the mlyard API's address (no home, none of the harness's environment), and every read
or write of the other project's things is refused, with nothing of theirs changed. A viewer starts
nothing; a revoked key stops at once; every change is in the audit trail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from tests.mlyard.test_workstation import _ok
from tests.mlyard.test_workstation import _one_line as _refused
from tests.test_user_paths import mlyard as owner
from tests.test_user_paths import user_dir

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Member:
    """A user's shell: their key, the API's address, a home and a work folder of their own."""

    def __init__(self, tmp: Path, stack, key: str):
        self.home, self.work = tmp / "home", tmp / "work"
        self.home.mkdir(parents=True)
        self.work.mkdir(parents=True)
        self.key = key
        self.env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
                    "MLYARD_API_URL": stack.service_url, "MLYARD_API_KEY": key}

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "mlyard"), *args], cwd=self.work, env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=180)

    def json(self, *args: str):
        return json.loads(_ok(self(*args, "--json")))

    def python(self, code: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "python"), "-c", code], cwd=self.work, env=self.env, capture_output=True,
                              text=True, timeout=180)


@pytest.fixture(scope="module")
def team(stack, tmp_path_factory):
    """team-a (alice an editor, carol a viewer) and team-b (bob an editor), made by the stack's owner."""
    tmp = tmp_path_factory.mktemp("team")
    _ok(owner("projects", "create", "team-a", "--gpus", "1", "--description", "vision"))
    _ok(owner("projects", "create", "team-b"))
    members = {}
    for name, project, role in (("alice", "team-a", "editor"), ("bob", "team-b", "editor"), ("carol", "team-a", "viewer")):
        made = json.loads(_ok(owner("users", "create", name, "--json")))
        assert made["name"] == name and made["key"].startswith("mly_")
        _ok(owner("projects", "add-member", project, name, "--role", role))
        members[name] = Member(tmp / name, stack, made["key"])
    return members


def test_each_member_works_in_their_project_and_cannot_see_or_touch_the_others(team, stack):
    alice, bob, carol = team["alice"], team["bob"], team["carol"]
    assert alice.json("whoami")["project"] == "team-a" and not alice.json("whoami")["admin"]

    # alice: a template and a training of team-a's (her only project, so no --project needed); her local folder
    # is uploaded to team-a's storage, where the platform's run reads it
    shutil.copytree(EXAMPLES / "sklearn_digits", alice.work / "algo")
    (alice.work / "t.yaml").write_text("name: a-t\nsource_uri: algo\nentry_point: train.py\n")
    template = alice.json("templates", "create", "a-t", "-f", "t.yaml")
    assert template["project"] == "team-a" and "/projects/team-a/uploads/" in template["source_uri"]
    spec = (EXAMPLES / "train.yaml").read_text().replace("examples/sklearn_digits", "algo").replace(
        "experiment: demo\n", "")  # the owner's demo experiment is the default project's: theirs is their own
    (alice.work / "train.yaml").write_text(spec.replace("epochs: 3", "epochs: 30").replace("epoch_seconds: 0.3",
                                                                                               "epoch_seconds: 1"))
    queued = alice.json("train", "-f", "train.yaml")  # a member's work always runs on the platform's pool
    run_id = queued["id"]
    assert [t["id"] for t in alice.json("trainings", "list")] == [run_id]
    shown = alice.json("trainings", "show", run_id[:8])
    assert shown["project"] == "team-a" and shown["spec"]["source_uri"] == template["source_uri"]
    # TensorBoard reads the run's folder on the platform's machine: from hers, one line saying where (a traceback)
    refused = alice("trainings", "tensorboard", run_id[:8])
    assert refused.returncode == 2 and "MLflow UI" in _refused(refused, "platform's own machine")

    # bob, of team-b: none of it exists for him, by any command; nothing of alice's changes
    assert bob.json("trainings", "list") == [] and bob.json("templates", "list") == []
    for args in (("trainings", "show", run_id), ("trainings", "show", run_id[:8]), ("trainings", "stop", run_id)):
        _refused(bob(*args), "not found")
    for args in (("templates", "show", "a-t"), ("templates", "delete", "a-t"), ("templates", "copy", "a-t", "b-t")):
        _refused(bob(*args), "'a-t' not found")
    _refused(bob("--project", "team-a", "trainings", "list"), "project 'team-a' not found")
    assert [e["name"] for e in bob.json("experiments", "list")] == []  # alice's run made team-a/default, not his
    _refused(bob("projects", "show", "team-a"), "not found")
    assert [p["name"] for p in bob.json("projects", "list")] == ["team-b"]
    _refused(bob("users", "create", "mallory"), "bob is no admin")
    _refused(bob("projects", "add-member", "team-a", "bob", "--role", "owner"), "not found")
    _refused(bob("users", "keys", "alice"), "not found")
    # bob's runs read his project's storage alone: not alice's upload, not the platform's home
    shutil.copytree(EXAMPLES / "sklearn_digits", bob.work / "algo")
    (bob.work / "train.yaml").write_text(spec.replace("epochs: 3", "epochs: 1"))
    first = bob.json("train", "-f", "train.yaml")
    mine = bob.json("trainings", "show", first["id"])["spec"]["source_uri"]
    assert "/projects/team-b/uploads/" in mine

    def run_of_bob(source: str, tags: list[str]) -> tuple[int, dict]:
        body = {"deployment": "train/train-local", "tags": tags, "job_variables": {}, "parameters": {"spec": {
            "name": "bob-run", "source_uri": source, "entry_point": "train.py",
            "hyperparameters": {"epochs": 1, "epoch_seconds": 0.01}}}}
        return _post(stack.service_url, "/v1/runs", body, bob.key)

    home = user_dir() / ".mlyard"
    for source in (template["source_uri"], str(home), str(home / "projects" / "team-b" / ".." / "team-a"),
                   "s3://platform-bucket/team-b", f"{mine}/../../../../team-a"):
        status, answer = run_of_bob(source, [])
        assert status == 400 and "source_uri" in answer["error"]["message"], (source, answer)
    # the project tag is the platform's to set: bob's own tags cannot put his run into team-a
    status, bobs = run_of_bob(mine, ["mlyard.project:team-a", "mlyard.user:alice"])
    assert status == 200, bobs
    assert {t["id"] for t in bob.json("trainings", "list")} == {first["id"], bobs["id"]}
    assert bobs["id"] not in [t["id"] for t in alice.json("trainings", "list")]
    # only trainings and tunings are open to members so far
    status, answer = _post(stack.service_url, "/v1/runs", {"deployment": "rag-sync/rag-sync-local", "parameters": {},
                                                            "tags": [], "job_variables": {}}, bob.key)
    assert status == 403 and "bob is no admin" in answer["error"]["message"]

    # carol, a viewer of team-a: she reads, she starts and stops nothing
    assert [t["id"] for t in carol.json("trainings", "list")] == [run_id]
    status, answer = _post(stack.service_url, "/v1/runs", {"deployment": "train/train-local", "tags": [], "job_variables": {},
                           "parameters": {"spec": {**shown["spec"], "name": "carol-run"}}}, carol.key)
    assert status == 403 and "carol is viewer in project 'team-a'; starting work needs editor" in answer["error"]["message"]
    shutil.copytree(EXAMPLES / "sklearn_digits", carol.work / "algo")
    (carol.work / "train.yaml").write_text(spec)  # her own folder: not even uploaded
    _refused(carol("train", "-f", "train.yaml"), "carol is viewer in project 'team-a'", "needs editor")
    _refused(carol("trainings", "stop", run_id), "carol is viewer", "needs editor")
    _refused(carol("templates", "delete", "a-t"), "needs owner")

    # the same from Python, with the same key alone; the script is told whose run it is, as EasyMaker tells it
    algo = alice.work / "whose"
    algo.mkdir()
    algo.chmod(0o755)
    (algo / "main.py").write_text("import os\nprint('appkey=' + os.environ['EM_APPKEY'], 'user=' + os.environ['EM_USER'])\n")
    py = alice.python("import mlyard; s = mlyard.train({'name': 'whose', 'source_uri': 'whose', 'entry_point': "
                      "'main.py'}, wait=False); print(s.id); print(s.wait(timeout=120).status)")
    assert py.returncode == 0, py.stderr
    whose_id, status = py.stdout.split()[-2:]
    assert status == "COMPLETE"
    records = [json.loads(line) for line in _ok(owner("logs", "--training", whose_id, "--json")).splitlines()]
    assert any("appkey=team-a user=alice" in r["body"] for r in records), records
    assert {(r.get("easymakerAppKey"), r.get("user")) for r in records} == {("team-a", "alice")}
    # `mlyard logs` shows a member their projects' records alone
    mine = [json.loads(line) for line in _ok(alice("logs", "--json", "--limit", "2000")).splitlines()]
    assert whose_id in {r.get("trainingId") for r in mine} and {r.get("easymakerAppKey") for r in mine} == {"team-a"}
    assert not [line for line in _ok(bob("logs", "--training", whose_id, "--json")).splitlines() if line.strip()]

    # models: bob registers his training's; for alice and carol it does not exist, nor his trainings
    deadline = time.monotonic() + 180
    while (status := bob.json("trainings", "show", first["id"])["status"]) != "COMPLETE":
        assert time.monotonic() < deadline and status in ("CREATE REQUESTED", "CREATE IN PROGRESS", "RUNNING",
                                                           "COMPLETE IN PROGRESS"), status
        time.sleep(1)
    assert [e["name"] for e in bob.json("experiments", "list")] == ["team-b/default"]  # his project's own default
    made = bob.json("models", "create", "b-model", "--from-training", first["id"][:8], "--alias", "champion")
    assert made["project"] == "team-b" and made["aliases"] == ["champion"]
    assert [m["name"] for m in bob.json("models", "list")] == ["b-model"]
    assert alice.json("models", "list") == [] and carol.json("models", "list") == []
    side = bob.json("models", "compare", "b-model@champion", "b-model/1")  # the run's metrics, through the door
    assert [v["model"] for v in side["versions"]] == ["b-model/1"] * 2 and side["metrics"]
    assert side["versions"][0]["metrics"] == side["versions"][1]["metrics"] != {}
    for args in (("models", "show", "b-model"), ("models", "show", "b-model@champion"),
                 ("models", "compare", "b-model", "b-model/1"),
                 ("models", "alias", "b-model", "stolen", "1"), ("models", "delete", "b-model"),
                 ("models", "rename", "b-model", "mine"), ("models", "describe", "b-model", "mine")):
        _refused(alice(*args), "model 'b-model' not found")
    _refused(alice("models", "create", "b-model", "--from-training", whose_id), "already exists")
    _refused(alice("models", "create", "a-model", "--from-training", first["id"]), "not found")
    _refused(bob("models", "delete", "b-model"), "bob is editor in project 'team-b'", "needs owner")
    assert "b-model" in [m["name"] for m in json.loads(_ok(owner("models", "list", "--json")))]

    # a batch inference with the project's model: its input uploaded, its output in the project's storage
    storage = bob.json("projects", "show", "team-b")["storage"]
    shutil.copytree(EXAMPLES / "data", bob.work / "data")
    batch = (EXAMPLES / "batch.yaml").read_text().replace("digits@champion", "b-model@champion").replace(
        "examples/data", "data").replace(".mlyard/outputs/digits-batch", f"{storage}outputs/b1")
    (bob.work / "batch.yaml").write_text(batch)
    queued = bob.json("batch", "-f", "batch.yaml")
    (alice.work / "batch.yaml").write_text(batch)
    _refused(alice("batch", "-f", "batch.yaml"), "model 'b-model' not found")  # his model is not hers
    (bob.work / "theirs.yaml").write_text(batch.replace(storage, storage.replace("team-b", "team-a")))
    _refused(bob("batch", "-f", "theirs.yaml"), "output_uri", "under your project's storage")  # nor her storage his
    shutil.copytree(EXAMPLES / "data", alice.work / "data")
    (alice.work / "other.yaml").write_text(batch.replace(storage, storage.replace("team-b", "team-a")).replace(
        "b-model@champion", "runs:/0123456789abcdef/model"))
    _refused(alice("batch", "-f", "other.yaml"), "model", "a run's files by id are not a project's")
    deadline = time.monotonic() + 180
    while (status := bob.json("batches", "show", queued["id"])["status"]) != "COMPLETE":
        assert time.monotonic() < deadline and "FAIL" not in status, status
        time.sleep(1)
    assert [b["id"] for b in bob.json("batches", "list")] == [queued["id"]] and alice.json("batches", "list") == []

    stopped = alice.json("trainings", "stop", run_id)
    assert stopped["status"] in ("STOP IN PROGRESS", "STOPPED", "COMPLETE")
    assert owner("trainings", "list", "--json").returncode == 0  # the owner, an admin, sees every project's

    # every change and every refusal of one, once, with who, project, result and where from
    records = json.loads(_ok(owner("audit", "--json", "--since", "1h")))
    seen = {(r["user"], r["action"], r["result"], r["project"]) for r in records}
    assert {("alice", "template.create", "ok", "team-a"), ("alice", "run.start", "ok", "team-a"),
            ("bob", "template.delete", "refused", "team-b"), ("bob", "run.start", "ok", "team-b"),
            ("carol", "run.start", "refused", "team-a"), ("alice", "run.stop", "ok", "team-a"),
            ("bob", "member.grant", "refused", "team-a")} <= seen, seen
    assert all(r["source"] == "127.0.0.1" for r in records if r["user"] in ("alice", "bob", "carol"))
    assert len([r for r in records if r["user"] == "alice" and r["action"] == "template.create"]) == 1
    _refused(alice("audit"), "alice is no owner")


def test_a_revoked_key_stops_at_once_and_a_bad_one_is_refused_before_the_body(team, stack):
    dave = json.loads(_ok(owner("users", "create", "dave", "--json")))
    _ok(owner("projects", "add-member", "team-b", "dave", "--role", "viewer"))
    member = Member(Path(team["bob"].home).parent.parent / "dave", stack, dave["key"])
    assert member.json("whoami")["name"] == "dave"
    keys = json.loads(_ok(owner("users", "keys", "dave", "--json")))
    assert [k["state"] for k in keys] == ["active"] and keys[0]["last_used_at"]
    _ok(owner("users", "revoke", dave["key_id"]))
    _refused(member("whoami"), "unknown, expired or revoked")
    _refused(member("trainings", "list"), "unknown, expired or revoked")

    # a request that claims a body larger than anything allowed is answered 401 on its headers alone
    import socket

    host, port = stack.service_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer mly_000000000000_" + b"A" * 43 +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401")
    # a member's: its length is refused on the headers too (413), and a body that does not say it (411)
    for length, code in ((b"Content-Length: 10000000000", b"413"), (b"Transfer-Encoding: chunked", b"411")):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/queries/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + team["bob"].key.encode()
                      + b"\r\nContent-Type: application/json\r\n" + length + b"\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 " + code)

    # an upload is unpacked inside the project's prefix or not at all: no `..`, no link out of it
    import io
    import tarfile

    def put(name: str, members: list[tarfile.TarInfo], key: str) -> tuple[int, dict]:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for m in members:
                tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
        req = urllib.request.Request(f"{stack.service_url}/v1/uploads/{'0' * 16}/{name}", data=raw.getvalue(),
                                     method="PUT", headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, target, 1 if kind == tarfile.REGTYPE else 0
        return info

    bob = team["bob"]
    for name, members in (("algo", [member("algo/../../escape.py")]), ("algo", [member("other/x.py")]),
                          ("algo", [member("algo/passwd", tarfile.SYMTYPE, "/etc/passwd")]),
                          ("..", [member("../x")])):
        status, answer = put(name, members, bob.key)
        assert status == 400, (name, answer)
    assert not list((user_dir() / ".mlyard" / "projects").rglob("escape.py"))
    status, answer = put("algo", [member("algo/x.py")], "mly_000000000000_" + "A" * 43)
    assert status == 401
    # a user's uploads at once are bounded: with four of bob's held open, his fifth is told to wait its turn
    held = []
    for _ in range(4):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"PUT /v1/uploads/" + b"1" * 16 + b"/algo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  bob.key.encode() + b"\r\nContent-Length: 100\r\n\r\n")
        held.append(s)
    time.sleep(2)  # all four taken in
    status, answer = put("algo", [member("algo/x.py")], bob.key)
    assert status == 429 and "4 uploads being received" in answer["error"]["message"], answer
    for s in held:
        s.close()
    deadline = time.monotonic() + 30
    while (status := put("algo", [member("algo/x.py")], bob.key)[0]) == 429:  # their slots given back
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert status == 200

    # `mlyard login` keeps the key for the user alone, and their commands use it
    erin = json.loads(_ok(owner("users", "create", "erin", "--json")))
    _ok(owner("projects", "add-member", "team-b", "erin", "--role", "editor"))
    shell = Member(Path(team["bob"].home).parent.parent / "erin", stack, "unused")
    del shell.env["MLYARD_API_KEY"], shell.env["MLYARD_API_URL"]
    _refused(shell("login", "--url", stack.service_url, "--key-stdin", stdin="mly_nope\n"), "not an mlyard API key")
    _ok(shell("login", "--url", stack.service_url, "--key-stdin", stdin=erin["key"] + "\n"))
    saved = shell.home / ".config" / "mlyard" / "login.json"
    assert saved.stat().st_mode & 0o077 == 0 and erin["key"] in saved.read_text()
    assert shell.json("whoami")["name"] == "erin" and shell.json("whoami")["project"] == "team-b"
    py = shell.python("import mlyard, mlyard.api; from mlyard.warm_api import post, signed_in_api; "
                      "from mlyard.core.settings import Settings; mlyard.train; "
                      "print(post(signed_in_api(Settings()), '/v1/queries/whoami', {})['name'])")
    assert py.returncode == 0 and py.stdout.split()[-1] == "erin", py.stderr  # Python reads the login too
    _ok(shell("logout"))
    assert not saved.exists()


def _until_active(member: Member, endpoint: str) -> None:
    """Until the member's queued endpoint is ACTIVE (its run records it, then deploys it)."""
    deadline, status = time.monotonic() + 240, ""
    while status != "ACTIVE":
        assert time.monotonic() < deadline and "FAIL" not in status, status
        time.sleep(1)
        shown = member("endpoints", "show", endpoint, "--json")
        status = json.loads(shown.stdout)["status"] if shown.returncode == 0 else ""


def _post(url: str, path: str, body: dict, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _door(url: str, key: str | None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={**headers, "Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _kernel_says(url: str, key: str, origin: str, code: str) -> str:
    """What the kernel prints for `code`, asked over its channels' websocket as JupyterLab asks."""
    import uuid

    from websockets.sync.client import connect

    session = uuid.uuid4().hex
    with connect(url.replace("http://", "ws://"), additional_headers={"Authorization": f"Bearer {key}",
                                                                      "Origin": origin}, open_timeout=30) as ws:
        ws.send(json.dumps({"header": {"msg_id": uuid.uuid4().hex, "username": "alice", "session": session,
                                       "msg_type": "execute_request", "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False}}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=60))
            if message.get("msg_type") == "stream":
                return message["content"]["text"]
    raise AssertionError("the kernel printed nothing")


def test_a_project_at_its_gpu_quota_queues_the_next_run_and_starts_it_when_a_slot_frees(team):
    """One machine, no GPU: a project's quota is still its own limit (a Prefect global concurrency limit), so
    its second 1-GPU training waits, says so in its log, and starts once the first gives the slot back."""
    bob = team["bob"]
    _ok(owner("projects", "set-quota", "team-b", "--gpus", "1"))
    algo = bob.work / "slow"
    algo.mkdir()
    (algo / "main.py").write_text("import time\nprint('start', time.time(), flush=True)\ntime.sleep(4)\n"
                                  "print('end', time.time(), flush=True)\n")
    spec = "name: {name}\nsource_uri: slow\nentry_point: main.py\nresources:\n  gpu_count: 1\n"
    (bob.work / "big.yaml").write_text(spec.format(name="big").replace("gpu_count: 1", "gpu_count: 2"))
    _refused(bob("train", "-f", "big.yaml"), "resources.gpu_count", "project team-b's quota")
    ids = []
    for name in ("first", "second"):
        (bob.work / f"{name}.yaml").write_text(spec.format(name=name))
        ids.append(bob.json("train", "-f", f"{name}.yaml")["id"])
    deadline = time.monotonic() + 180
    while {bob.json("trainings", "show", i)["status"] for i in ids} != {"COMPLETE"}:
        assert time.monotonic() < deadline
        time.sleep(1)
    times = {}
    for i in ids:
        lines = [json.loads(line)["body"] for line in _ok(owner("logs", "--training", i, "--json")).splitlines()]
        times[i] = ([float(b.split()[1]) for b in lines if b.startswith("start ")][0],
                    [float(b.split()[1]) for b in lines if b.startswith("end ")][0],
                    any("waiting for 1 of project team-b's 1 GPU(s)" in b for b in lines))
    (a_start, a_end, a_waited), (b_start, b_end, b_waited) = sorted(times.values())
    assert b_start >= a_end and (a_waited or b_waited), times  # never both at once; the later one said why
    _ok(owner("projects", "set-quota", "team-b", "--gpus", "8"))


def test_a_members_endpoint_is_their_projects_its_tokens_and_their_keys_open_it(team, stack):
    """bob (editor of team-b) deploys his project's model (registered by the first test) as an endpoint;
    its tokens are issued by him, his key opens it too; for alice it does not exist by any path, and her key
    does not open it; deleting it needs team-b's owner."""
    from mlyard.core.connection import gateway_url
    from mlyard.core.settings import Settings

    alice, bob = team["alice"], team["bob"]
    (bob.work / "ep.yaml").write_text("name: b-ep\nstage:\n  resources:\n    - model: b-model@champion\n")
    (alice.work / "ep.yaml").write_text("name: a-ep\nstage:\n  resources:\n    - model: b-model@champion\n")
    _refused(alice("endpoints", "create", "-f", "ep.yaml"), "model 'b-model' not found")
    bob.json("endpoints", "create", "-f", "ep.yaml")  # queued: its run records it, then deploys it
    _until_active(bob, "b-ep")
    assert [e["name"] for e in bob.json("endpoints", "list")] == ["b-ep"] and alice.json("endpoints", "list") == []
    token = bob.json("endpoints", "tokens", "issue", "b-ep", "--days", "1")["token"]
    for args in (("endpoints", "show", "b-ep"), ("endpoints", "tokens", "list", "b-ep"),
                 ("endpoints", "tokens", "issue", "b-ep"), ("endpoints", "delete", "b-ep")):
        _refused(alice(*args), "endpoint 'b-ep' not found")
    url = f"{gateway_url(Settings())}/b-ep/b-model/v1/models/b-model:predict"
    body = json.dumps({"instances": [[0.0] * 64]}).encode()

    def call(credential: str) -> int:
        req = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {credential}",
                                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert call(token) == 200 and call(bob.key) == 200 and call(alice.key) == 401

    # his stages and their traffic are his to change, as an editor of team-b: a new stage of his project's model,
    # a canary share, its promotion; none of it is alice's
    def stage_of(name: str) -> dict:
        return next((s for s in bob.json("endpoints", "show", "b-ep")["stages"] if s["name"] == name), {})

    def until(what: Callable[[], bool], why: str) -> None:
        deadline = time.monotonic() + 240
        while not what():
            assert time.monotonic() < deadline, why
            time.sleep(1)

    (bob.work / "stage.yaml").write_text("name: next\nresources:\n  - model: b-model@champion\n")
    (alice.work / "stage.yaml").write_text("name: mine\nresources:\n  - model: b-model@champion\n")
    for args in (("endpoints", "add-stage", "b-ep", "-f", "stage.yaml"), ("endpoints", "canary", "b-ep", "default",
                 "--weight", "10"), ("endpoints", "promote", "b-ep", "default"), ("endpoints", "retry", "b-ep")):
        _refused(alice(*args), "endpoint 'b-ep' not found")
    assert bob.json("endpoints", "add-stage", "b-ep", "-f", "stage.yaml")["status"] == "CREATE REQUESTED"
    until(lambda: stage_of("next").get("status") == "ACTIVE", "his new stage to come up")
    bob.json("endpoints", "canary", "b-ep", "next", "--weight", "10")
    until(lambda: stage_of("next").get("weight") == 10, "the canary share")
    bob.json("endpoints", "promote", "b-ep", "next")
    until(lambda: bob.json("endpoints", "show", "b-ep")["default_stage"] == "next", "the promotion")
    assert call(token) == 200  # the endpoint's token still opens it, now answered by the promoted stage
    # the statistics say whose calls they were: his token's and his key's (alice's refused call is nobody's)
    token_id = bob.json("endpoints", "tokens", "list", "b-ep")[0]["id"]
    used: dict[str, int] = {}
    for row in bob.json("endpoints", "stats", "b-ep", "--since", "1h")["stats"]:
        for c in row["callers"]:
            used[c["caller"]] = used.get(c["caller"], 0) + c["calls"]
    assert used == {f"token:{token_id}": 2, f"key:{bob.key.split('_')[1]} (bob)": 1}, used
    _refused(alice("endpoints", "stats", "b-ep"), "endpoint 'b-ep' not found")
    _refused(bob("endpoints", "delete", "b-ep"), "bob is editor in project 'team-b'", "needs owner")
    _ok(owner("projects", "add-member", "team-b", "bob", "--role", "owner"))
    bob.json("endpoints", "delete", "b-ep")
    deadline = time.monotonic() + 120
    while "b-ep" in [e["name"] for e in bob.json("endpoints", "list")]:
        assert time.monotonic() < deadline
        time.sleep(1)


def test_a_members_schedule_and_notebook_are_their_projects_and_theirs(team, stack, settings):
    """alice schedules a training and makes a notebook, from fresh processes with her key alone: the schedule's
    run is team-a's and hers; the notebook's JupyterLab opens for her alone. bob (team-b) finds neither;
    carol (a viewer of team-a) sees both and changes nothing."""
    from datetime import datetime, timedelta, timezone

    alice, bob, carol = team["alice"], team["bob"], team["carol"]
    if not (alice.work / "algo").exists():
        shutil.copytree(EXAMPLES / "sklearn_digits", alice.work / "algo")
    first = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=20)
    (alice.work / "nightly.yaml").write_text(json.dumps({
        "name": "a-nightly", "deployment": "train/train-local", "interval": {"every": 1, "unit": "hours"},
        "start_time": (first - timedelta(hours=1)).isoformat(),  # its first slot: `first`
        "parameters": {"spec": {"name": "a-sched", "source_uri": "algo", "entry_point": "train.py",
                                "hyperparameters": {"epochs": 1, "epoch_seconds": 0.01}}}}))
    made = alice.json("schedules", "create", "-f", "nightly.yaml")
    assert (made["project"], made["owner"], made["status"]) == ("team-a", "alice", "ENABLED"), made
    stored = made["parameters"]["spec"]
    assert "/projects/team-a/uploads/" in stored["source_uri"] and stored["experiment"] == "team-a/default", stored
    (alice.work / "lab.yaml").write_text("name: a-lab\ninstance_type: cpu-2\n")
    lab = alice.json("notebooks", "create", "-f", "lab.yaml", "--wait")
    assert (lab["project"], lab["owner"], lab["status"]) == ("team-a", "alice", "ACTIVE (HEALTHY)"), lab
    # her JupyterLab, through the front door where she signs in (here her key as a bearer token; a browser's
    # session cookie is the same), with no token of its own to hold; a kernel runs her code over its websocket
    url = _ok(alice("notebooks", "open", "a-lab")).strip()
    assert url.startswith(settings.door_url + "/notebooks/") and url.endswith("/lab") and "token" not in url
    base = url.removesuffix("/lab")
    assert _door(f"{base}/api/status", alice.key)[0] == 200
    status, kernel = _door(f"{base}/api/kernels", alice.key, {"name": "python3"})
    assert status == 201, kernel
    assert _kernel_says(f"{base}/api/kernels/{kernel['id']}/channels", alice.key, settings.door_url,
                        "print(6 * 7)") == "42\n"
    # her kernel runs in the notebook's sandbox: the stack's home, the replicas' credential and the stack's
    # processes are not there (a kernel read other notebooks' tokens and the Prefect auth string)
    probe = ("import json, os\n"
             f"home = {str(settings.home_dir)!r}\n"
             "seen = [p for p in os.listdir('/proc') if p.isdigit() and any(w in open(f'/proc/{p}/cmdline').read() "
             "for w in ('prefect', 'mlyard.service', 'mlyard.serving.replicas'))]\n"
             "print(json.dumps({'record': os.path.exists(os.path.join(home, 'stack.json')), 'others': seen,\n"
             "                  'credentials': sorted(k for k in os.environ if k in ('MLYARD_REPLICA_TOKEN', "
             "'PREFECT_API_AUTH_STRING', 'MLYARD_INTERNAL_TOKEN'))}))")
    seen = json.loads(_kernel_says(f"{base}/api/kernels/{kernel['id']}/channels", alice.key, settings.door_url, probe))
    assert seen == {"record": False, "others": [], "credentials": []}, seen
    for key, code in ((bob.key, 404), (carol.key, 403), (None, 401)):  # not his project's; not hers; nobody
        assert _door(f"{base}/api/contents", key)[0] == code
    with pytest.raises(Exception):  # noqa: B017 - a websocket from another origin is closed before Jupyter is asked
        _kernel_says(f"{base}/api/kernels/{kernel['id']}/channels", alice.key, "http://127.0.0.1:1", "1")
    # a key revoked while its kernel's websocket is open: the door closes it within seconds (it ran code 31 s on)
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    spare = json.loads(_ok(owner("users", "add-key", "alice", "--json")))
    with connect(f"{base}/api/kernels/{kernel['id']}/channels".replace("http://", "ws://"), open_timeout=30,
                 additional_headers={"Authorization": f"Bearer {spare['key']}", "Origin": settings.door_url}) as ws:
        _ok(owner("users", "revoke", str(spare["key_id"])))
        revoked = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=15)
        assert time.monotonic() - revoked < 6 and closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # JupyterLab itself answers only its token, which the platform keeps (its file is the stack home's, 0600)
    direct = _ok(owner("notebooks", "open", "a-lab"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(direct.strip().split("/lab?token=")[0] + "/api/contents", timeout=30)
    assert refused.value.code == 403

    # bob: neither exists for him, by the CLI or Python; nothing of alice's changes
    assert bob.json("schedules", "list") == [] and bob.json("notebooks", "list") == []
    for args in (("schedules", "show", "a-nightly"), ("schedules", "disable", "a-nightly"),
                 ("schedules", "enable", "a-nightly"), ("schedules", "delete", "a-nightly"),
                 ("schedules", "copy", "a-nightly", "b-nightly")):
        _refused(bob(*args), "schedule 'a-nightly' not found")
    for args in (("notebooks", "show", "a-lab"), ("notebooks", "open", "a-lab"), ("notebooks", "stop", "a-lab"),
                 ("notebooks", "delete", "a-lab"), ("notebooks", "rename", "a-lab", "mine")):
        _refused(bob(*args), "notebook 'a-lab' not found")
    py = bob.python("import mlyard.notebooks as n\ntry:\n    n.open_url('a-lab')\nexcept Exception as e:\n"
                    "    print(type(e).__name__, e)")
    assert py.returncode == 0 and "NotebookNotFound" in py.stdout, (py.stdout, py.stderr)
    # a schedule of bob's reads his project's storage alone, as his runs do (sent as is: his CLI would upload
    # what his own account can read, which alice's storage is not, outside this harness's one account)
    status, answer = _post(stack.service_url, "/v1/commands/schedules_create", {"spec": {
        "name": "b-theirs", "deployment": "train/train-local", "cron": "0 0 3 * * *",
        "parameters": {"spec": {"name": "b", "source_uri": stored["source_uri"], "entry_point": "train.py"}}}}, bob.key)
    assert status == 400 and "source_uri" in answer["error"]["message"], answer
    assert "b-theirs" not in [s["name"] for s in json.loads(_ok(owner("schedules", "list", "--json")))]

    # carol, a viewer of team-a: she sees both, opens and changes nothing
    assert [s["name"] for s in carol.json("schedules", "list")] == ["a-nightly"]
    assert [n["name"] for n in carol.json("notebooks", "list")] == ["a-lab"]
    assert "start_up_log" not in carol.json("notebooks", "show", "a-lab")  # the user's files are hers alone
    _refused(carol("schedules", "disable", "a-nightly"), "carol is viewer", "needs editor")
    _refused(carol("notebooks", "open", "a-lab"), "carol is viewer", "needs editor")
    _refused(carol("schedules", "create", "-f", str(alice.work / "nightly.yaml")), "carol is viewer", "needs editor")
    _refused(alice("schedules", "delete", "a-nightly"), "alice is editor", "needs owner")

    # the schedule's run is team-a's and alice's: in her trainings, not in bob's
    deadline = time.monotonic() + 120
    while not (runs := [t for t in alice.json("trainings", "list") if t["name"] == "a-sched"]):
        assert time.monotonic() < deadline, "the schedule's run did not come"
        time.sleep(1)
    assert runs[0]["project"] == "team-a" and "a-sched" not in [t["name"] for t in bob.json("trainings", "list")]
    # the dashboard of each one's projects alone: by the CLI, and as a page through the door
    board = alice.json("dashboard")
    assert [p["project"] for p in board["projects"]] == ["team-a"] and board["usage"]["notebooks_healthy"] == 1
    assert board["audit"] == []  # the audit trail is the project owners' to read
    assert [p["project"] for p in bob.json("dashboard")["projects"]] == ["team-b"]
    assert bob.json("dashboard")["usage"]["notebooks_healthy"] == 0
    page = urllib.request.urlopen(urllib.request.Request(f"{settings.door_url}/mlyard/dashboard", headers={
        "Authorization": f"Bearer {bob.key}"}), timeout=60).read().decode()
    assert "<td>team-b</td>" in page and "team-a" not in page
    _refused(bob("dashboard", "--publish"), "--publish", "an admin publishes it")
    assert alice.json("schedules", "disable", "a-nightly")["status"] == "DISABLED"
    assert alice.json("notebooks", "stop", "a-lab", "--wait")["status"] == "STOPPED"
    assert owner("notebooks", "delete", "a-lab", "--wait").returncode == 0  # an admin may
    records = json.loads(_ok(owner("audit", "--json", "--since", "1h")))
    seen = {(r["user"], r["action"], r["result"], r["project"]) for r in records}
    assert {("alice", "schedule.create", "ok", "team-a"), ("alice", "notebook.create", "ok", "team-a"),
            ("bob", "schedule.disable", "refused", "team-b"), ("carol", "schedule.disable", "refused", "team-a")} <= seen, \
        seen


def test_a_projects_images_and_registry_accounts_are_its_own(team, stack):
    """alice registers her registry login and a private image in team-a; for bob they do not exist, his runs
    cannot name her image or pull from her private registry with her login, and carol (a viewer) registers
    nothing."""
    alice, bob, carol = team["alice"], team["bob"], team["carol"]
    made = json.loads(_ok(alice("registry-accounts", "create", "a-login", "--registry", "registry.team-a.example",
                                "--username", "alice", "--password-stdin", "--json", stdin="s3cret\n")))
    assert made["project"] == "team-a" and "s3cret" not in json.dumps(made)
    image = alice.json("images", "create", "a-img", "--address", "registry.team-a.example/lab/train:1",
                       "--account", "a-login")
    assert image["project"] == "team-a" and image["account"] == "a-login"
    assert [i["name"] for i in alice.json("images", "list")] == ["a-img"]
    assert bob.json("images", "list") == [] and bob.json("registry-accounts", "list") == []
    for args in (("images", "show", "a-img"), ("images", "delete", "a-img")):
        _refused(bob(*args), "image 'a-img' not found")
    _refused(bob("registry-accounts", "show", "a-login"), "not found")
    # his own image cannot borrow her login, nor his runs her image or her private registry
    _refused(bob("images", "create", "b-img", "--address", "registry.team-a.example/lab/train:1", "--account",
                 "a-login"), "not found")
    storage = bob.json("projects", "show", "team-b")["storage"]
    spec = {"name": "b-img-run", "source_uri": f"{storage}algo", "entry_point": "train.py"}
    for ref, words in (("a-img", "image 'a-img' not found"),
                       ("registry.team-a.example/lab/train:1", "registry registry.team-a.example is private")):
        status, answer = _post(stack.service_url, "/v1/runs", {"deployment": "train/train-local", "tags": [],
                               "job_variables": {}, "parameters": {"spec": {**spec, "image": ref}}}, bob.key)
        assert status in (400, 404) and words in answer["error"]["message"], answer
        assert "a-login" not in answer["error"]["message"]  # her account's name is not told to him
    _refused(carol("images", "create", "c-img", "--address", "docker.io/library/python:3.11"), "carol is viewer",
             "needs editor")
    _refused(alice("images", "delete", "a-img"), "alice is editor", "needs owner")
    assert "a-img" in [i["name"] for i in json.loads(_ok(owner("images", "list", "--json")))]


def test_a_projects_pipelines_and_rags_are_its_own(team, stack, settings):
    """alice uploads and runs a pipeline and makes a RAG over a folder of hers, from fresh processes with her
    key alone: they are team-a's, her local files reach team-a's storage, she downloads the run's outputs and
    asks the RAG at the gateway with her key. For bob (team-b) none of it exists, by any path, and his RAG may
    reach nothing of the platform's; carol (a viewer of team-a) reads and asks, and changes nothing."""
    from mlyard.core.connection import gateway_url

    alice, bob, carol = team["alice"], team["bob"], team["carol"]
    shutil.copy(EXAMPLES / "pipelines" / "example.yaml", alice.work / "pipe.yaml")
    made = alice.json("pipelines", "upload", "pipe.yaml", "--name", "a-pipe")
    assert (made["project"], made["status"]) == ("team-a", "ACTIVE"), made
    run = alice.json("pipeline-runs", "create", "--pipeline", "a-pipe", "--name", "a-r1", "--param", "epochs=1",
                     "--param", "rows=40", "--wait")
    assert (run["project"], run["status"]) == ("team-a", "COMPLETE"), run
    assert alice.json("pipeline-runs", "download", run["id"], "out")["copied"] and any((alice.work / "out").rglob("*"))
    _ok(alice("pipeline-runs", "graph", run["id"], "--out", "run.png"))  # drawn where she is
    assert (alice.work / "run.png").stat().st_size > 1000

    assert bob.json("pipelines", "list") == [] and bob.json("pipeline-runs", "list") == []
    for args in (("pipelines", "show", "a-pipe"), ("pipelines", "graph", "a-pipe"), ("pipelines", "delete", "a-pipe"),
                 ("pipeline-runs", "create", "--pipeline", "a-pipe", "--name", "b-r1")):
        _refused(bob(*args), "pipeline 'a-pipe' not found")
    for args in (("pipeline-runs", "show", run["id"]), ("pipeline-runs", "stop", run["id"]),
                 ("pipeline-runs", "download", run["id"], "out"), ("pipeline-runs", "delete", run["id"]),
                 ("pipeline-runs", "copy", run["id"])):
        _refused(bob(*args), "not found")
    assert [p["name"] for p in carol.json("pipelines", "list")] == ["a-pipe"]
    assert [r["id"] for r in carol.json("pipeline-runs", "list")] == [run["id"]]
    _refused(carol("pipeline-runs", "create", "--pipeline", "a-pipe", "--name", "c-r1"), "carol is viewer",
             "needs editor")
    _refused(carol("pipelines", "upload", str(alice.work / "pipe.yaml"), "--name", "c-pipe"), "carol is viewer", "needs editor")
    _refused(alice("pipeline-runs", "delete", run["id"]), "alice is editor", "needs owner")
    _refused(alice("pipelines", "delete", "a-pipe"), "alice is editor", "needs owner")

    # a RAG over her folder: uploaded to team-a's storage, ingested by the platform, asked with her key
    docs = alice.work / "docs"
    docs.mkdir()
    (docs / "backups.md").write_text("# Backups\n\nBackups of team A are kept for 35 days in the vault.\n")
    (docs / "support.md").write_text("# Support\n\nSupport answers within four hours on weekdays.\n")
    (alice.work / "rag.yaml").write_text("name: a-rag\npath: docs\ntop_k: 1\n")
    rag = alice.json("rags", "create", "-f", "rag.yaml", "--wait")
    assert (rag["project"], rag["status"]) == ("team-a", "ACTIVE") and "/projects/team-a/uploads/" in rag["path"], rag
    assert alice.json("rags", "search", "a-rag", "How long are backups kept?")[0]["file"] == "backups.md"
    deadline = time.monotonic() + 180
    while alice.json("rags", "show", "a-rag")["deploy_status"] == "DEPLOYING":
        assert time.monotonic() < deadline
        time.sleep(1)
    assert "35 days" in alice.json("rags", "query", "a-rag", "How long are backups kept?")["answer"]
    assert "35 days" in carol.json("rags", "query", "a-rag", "How long are backups kept?")["answer"]

    def ask(key: str | None) -> int:
        req = urllib.request.Request(f"{gateway_url(settings)}/rag/v1/search", method="POST", data=json.dumps(
            {"model": "a-rag", "query": "backups"}).encode(), headers={"Content-Type": "application/json", **(
                {"Authorization": f"Bearer {key}"} if key else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert (ask(alice.key), ask(bob.key), ask(None)) == (200, 401, 401)  # a project's RAG is never public
    assert bob.json("rags", "list") == []
    for args in (("rags", "show", "a-rag"), ("rags", "search", "a-rag", "backups"), ("rags", "sync", "a-rag"),
                 ("rags", "query", "a-rag", "backups"), ("rags", "history", "a-rag"), ("rags", "logs", "a-rag"),
                 ("rags", "update", "a-rag", "--set", "top_k=2"), ("rags", "delete", "a-rag"),
                 ("rags", "stats", "a-rag")):
        _refused(bob(*args), "RAG 'a-rag' not found")
    # his RAG reads his project's storage alone, keeps its vectors in the platform's store, asks his project's
    # endpoints, and names none of the platform's environment variables
    storage = bob.json("projects", "show", "team-b")["storage"]
    spec = {"name": "b-rag", "path": f"{storage}docs"}
    for extra, field in (({"path": rag["path"]}, "path"), ({"path": str(user_dir() / ".mlyard")}, "path"),
                         ({"vector_store": {"kind": "postgresql", "host": "127.0.0.1"}}, "vector_store.kind"),
                         ({"llm": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "MLYARD_INTERNAL_TOKEN"}},
                          "llm.api_key_env"),
                         ({"embedding": {"model": str(user_dir() / ".mlyard" / "models")}}, "embedding.model"),
                         ({"llm": {"endpoint": "a-ep"}}, "llm.endpoint")):
        status, answer = _post(stack.service_url, "/v1/commands/rags_create", {"spec": {**spec, **extra}}, bob.key)
        assert status == 400 and field in answer["error"]["message"], (extra, answer)
    assert [r["name"] for r in json.loads(_ok(owner("rags", "list", "--json")))] == ["a-rag"]
    _refused(carol("rags", "sync", "a-rag"), "carol is viewer", "needs editor")
    _refused(alice("rags", "delete", "a-rag"), "alice is editor", "needs owner")
    assert alice.json("rags", "sync", "a-rag", "--wait")["status"] == "ACTIVE"
    assert owner("rags", "delete", "a-rag").returncode == 0 and owner("pipelines", "delete", "a-pipe").returncode == 0
    records = json.loads(_ok(owner("audit", "--json", "--since", "1h")))
    seen = {(r["user"], r["action"], r["result"], r["project"]) for r in records}
    assert {("alice", "pipeline.upload", "ok", "team-a"), ("alice", "rag.create", "ok", "team-a"),
            ("alice", "rag.sync", "ok", "team-a"), ("bob", "rag.create", "refused", "team-b"),
            ("carol", "rag.sync", "refused", "team-a")} <= seen, seen


def test_a_members_push_of_a_folder_is_their_projects_endpoint(team, stack, settings):
    """bob pushes a folder of his (an entry script and what it loads) as a new endpoint of team-b: it is
    uploaded to his project, checked and deployed by the platform as him, and the URL lands in his own
    inference.config.json; alice can neither push to it nor take its name or its model."""
    alice, bob = team["alice"], team["bob"]
    for member in (alice, bob):
        app = member.work / "app"
        app.mkdir()
        (app / "score.py").write_text("import json\n\ndef init():\n    pass\n\ndef run(raw):\n"
                                      "    return {'sum': sum(json.loads(raw)['data'])}\n")
    pushed = bob.json("endpoints", "deploy", "b-push", "--sync", "app")  # followed until the run has made it
    config = json.loads((bob.work / "app" / "infra" / "inference.config.json").read_text())
    assert config["ACA_APP_NAME"] == "b-push" and config["MLYARD_SCORE_URL"].endswith("/b-push/b-push/score"), config
    assert config["MLYARD_MODEL_VERSION"] == "b-push/1" and pushed["status"] == "ACTIVE", (config, pushed)
    assert pushed["config"]["path"] == str(bob.work / "app" / "infra" / "inference.config.json")
    _until_active(bob, "b-push")
    view = bob.json("endpoints", "show", "b-push")
    assert view["project"] == "team-b" and view["stages"][0]["resources"][0]["model"] == "b-push/1", view
    assert "b-push" in [m["name"] for m in bob.json("models", "list")]  # his project's model
    assert "b-push" not in [m["name"] for m in alice.json("models", "list")]
    req = urllib.request.Request(config["MLYARD_SCORE_URL"], data=json.dumps({"data": [1, 2, 3]}).encode(),
                                 headers={"Authorization": f"Bearer {bob.key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["sum"] == 6
    status, answer = _post(stack.service_url, "/v1/queries/push_state", {"run_id": pushed["flow_run_id"]}, alice.key)
    assert status == 404, answer  # his push's run does not exist for her
    _refused(alice("endpoints", "deploy", "b-push", "--sync", "app"), "endpoint 'b-push' already exists")
    _refused(alice("endpoints", "deploy", "a-push", "--sync", "app", "--model", "b-push"), "model 'b-push' not found")
    # a push names a folder of the project's storage alone (sent as is: his CLI uploads what he can read)
    status, answer = _post(stack.service_url, "/v1/runs", {"deployment": "sync-endpoint-code/sync-endpoint-code-local", "tags": [],
                           "job_variables": {}, "parameters": {"spec": {"endpoint": "b-other",
                                                                        "source": str(EXAMPLES / "sklearn_digits")}}},
                           bob.key)
    assert status == 400 and "source" in answer["error"]["message"], answer


def test_a_members_ui_status_and_links_lead_to_the_door_never_to_a_local_stack(team, settings):
    """A member's `ui prefect`, `status`, `ui mlflow` and a run's links are the platform's, as they reach it:
    the front door (their projects' runs), never the owner's Prefect port, and never a stack or an MLflow
    started in the member's own folder."""
    alice = team["alice"]
    door = settings.door_url
    said = _ok(alice("ui", "prefect"))
    assert door in said and "mlyard up" not in said, said
    status = alice.json("status")
    assert status["name"] == "alice" and status["urls"]["prefect_ui"] == door and status["platform"], status
    shown = alice("ui", "mlflow")
    assert (shown.returncode == 0 and "password: your API key" in shown.stdout) or \
        (shown.returncode == 2 and "its owner starts it" in shown.stderr), shown
    algo = alice.work / "linked"
    algo.mkdir()
    algo.chmod(0o755)
    (algo / "main.py").write_text("print('accuracy=0.5')\n")
    (alice.work / "linked.yaml").write_text("name: linked\nsource_uri: linked\nentry_point: main.py\n")
    made = alice.json("train", "-f", "linked.yaml")
    run_id = made.get("training_id") or made["id"]
    links = alice.json("trainings", "show", run_id)["links"]
    assert links["prefect"] == f"{door}/runs/flow-run/{run_id}", links
    made_here = [p for p in alice.work.rglob("*") if p.name in ("stack.json", "mlruns", "mlflow.db", "prefect.db")]
    assert made_here == [], made_here  # no stack, no MLflow, no Prefect of the member's own
