"""The Prefect API through mlyard's front door (mlyard/prefect_door.py), as project members' browsers and
scripts call it on a running stack: signed in with their key, each sees and runs their project's flow runs
alone, and every read or write of the other project's is refused as if it did not exist; what the door
does not know is denied; a write from another site is refused; a revoked key ends the session at once.
(tests/browser/test_prefect_door.py presses the Run button in Chromium.)"""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.mlyard.test_workstation import _ok
from tests.test_user_paths import mlyard as owner
from tests.test_user_paths import user_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def call(url: str, method: str = "GET", body: dict | bytes | None = None, cookie: str | None = None,
         headers: dict | None = None) -> tuple[int, dict, object]:
    """(status, headers, JSON or text) of one request, redirects not followed."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **({"Cookie": f"mlyard_door={cookie}"} if cookie else {}),
            **(headers or {})}
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, method=method, headers=sent), timeout=60) as resp:
            status, got, raw = resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        status, got, raw = exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    try:
        return status, got, json.loads(raw)
    except ValueError:
        return status, got, raw.decode("utf-8", "replace")


def sign_in(door: str, key: str, project: str = "") -> str:
    status, headers, page = call(f"{door}/sign-in", "POST", urlencode({"key": key, "project": project,
                                                                       "next": "/runs"}).encode(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and headers["location"] == "/runs", (status, page)
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and key not in cookie
    return cookie.split(";", 1)[0].split("=", 1)[1]


@pytest.fixture(scope="module")
def door_team(stack):
    """door-a (dana an editor, finn a viewer) and door-b (erik an editor); each project's storage holds the
    example training (as a member's upload leaves it there)."""
    from mlyard.core.settings import Settings

    members = {}
    for project in ("door-a", "door-b"):
        _ok(owner("projects", "create", project))
        shutil.copytree(EXAMPLES / "sklearn_digits", user_dir() / ".mlyard" / "projects" / project / "algo")
    for name, project, role in (("dana", "door-a", "editor"), ("erik", "door-b", "editor"), ("finn", "door-a", "viewer")):
        members[name] = json.loads(_ok(owner("users", "create", name, "--json")))
        _ok(owner("projects", "add-member", project, name, "--role", role))
    return Settings().door_url, members


def _spec(project: str, name: str) -> dict:
    return {"spec": {"name": name, "source_uri": str(user_dir() / ".mlyard" / "projects" / project / "algo"),
                     "entry_point": "train.py", "hyperparameters": {"epochs": 1, "epoch_seconds": 0.01}}}


def test_each_member_sees_and_runs_their_projects_flow_runs_alone(door_team, stack):
    door, users = door_team
    api = f"{door}/api"

    # nobody is let in for being on the machine: a page answers with the sign-in form (back to that page once
    # signed in), the API answers 401, and a body claimed bigger than anything allowed is refused on the
    # headers alone
    assert call(f"{api}/flow_runs/filter", "POST", {})[0] == 401
    status, headers, page = call(f"{door}/runs?x=1")
    assert status == 401 and 'name="next" value="/runs?x=1"' in page and "x-frame-options" in headers
    host, port = door.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/flow_runs/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 401")
    status, _, page = call(f"{door}/sign-in", "POST", urlencode({"key": "mly_000000000000_" + "A" * 43}).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401 and "unknown, expired or revoked" in page
    dana, erik, finn = (sign_in(door, users[n]["key"]) for n in ("dana", "erik", "finn"))
    settings = call(f"{door}/ui-settings", cookie=dana)[2]
    assert settings["api_url"] == f"{api}" and settings["auth"] is None  # the UI talks to the door, no password

    # the Run button's request: the run is made by mlyard, in dana's project, whatever tags or job variables
    # the request says; a typed run name is kept
    runnable = call(f"{api}/deployments/filter", "POST", {}, cookie=dana)[2]
    names = {d["name"] for d in runnable}
    by_flow = {call(f"{api}/flows/{d['flow_id']}", cookie=dana)[2]["name"]: d["id"] for d in runnable}
    assert {"train", "tune", "batch-inference", "evaluate"} <= set(by_flow) and "rag-sync" not in by_flow, by_flow
    assert names and call(f"{api}/deployments/count", "POST", {}, cookie=dana)[2] == len(runnable)
    page = call(f"{api}/deployments/paginate", "POST", {}, cookie=dana)[2]["results"]
    # the owner's Run form examples (paths of the owner's checkout) reach no member, in lists or one by one
    assert [d["parameters"] for d in runnable + page] == [{}] * (len(runnable) + len(page))
    assert call(f"{api}/deployments/{by_flow['train']}", cookie=dana)[2]["parameters"] == {}
    train = by_flow["train"]
    status, _, made = call(f"{api}/deployments/{train}/create_flow_run", "POST", {
        "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"}, "name": "dana-from-door",
        "parameters": _spec("door-a", "door-a-train"), "tags": ["mlyard.project:door-b", "mine"],
        "job_variables": {"image": "evil"}}, cookie=dana)
    assert status == 201, made
    assert made["name"] == "dana-from-door" and "mlyard.project:door-a" in made["tags"] and "mine" in made["tags"]
    assert "mlyard.user:dana" in made["tags"] and "mlyard.project:door-b" not in made["tags"]
    status, _, theirs = call(f"{api}/deployments/{train}/create_flow_run", "POST", {
        "state": {"type": "SCHEDULED"}, "parameters": _spec("door-b", "door-b-train")}, cookie=erik)
    assert status == 201, theirs
    # another project's storage, and a viewer, are refused before any run is made
    status, _, refused = call(f"{api}/deployments/{train}/create_flow_run", "POST", {
        "state": {"type": "SCHEDULED"}, "parameters": _spec("door-b", "stolen")}, cookie=dana)
    assert status == 422 and "source_uri" in refused["detail"], refused
    status, _, refused = call(f"{api}/deployments/{train}/create_flow_run", "POST", {
        "state": {"type": "SCHEDULED"}, "parameters": _spec("door-a", "finn-run")}, cookie=finn)
    assert status == 403 and "finn is viewer in project 'door-a'; starting work needs editor" in refused["detail"]

    # lists: each sees their project's runs alone, whatever the filter asks
    def ids(cookie: str, body: dict) -> set[str]:
        status, _, runs = call(f"{api}/flow_runs/filter", "POST", body, cookie=cookie)
        assert status == 200, runs
        return {r["id"] for r in runs}

    assert made["id"] in ids(dana, {}) and theirs["id"] not in ids(dana, {})
    assert ids(finn, {}) == ids(dana, {})
    widened = {"flow_runs": {"operator": "or_", "tags": {"operator": "or_", "any_": ["mlyard.project:door-b"]},
                             "id": {"any_": [theirs["id"]]}}}
    assert theirs["id"] not in ids(dana, widened) and ids(erik, {}) == {theirs["id"]}
    assert call(f"{api}/flow_runs/count", "POST", {}, cookie=erik)[2] == 1
    assert call(f"{api}/task_runs/count", "POST", {"flow_runs": {"id": {"any_": [theirs["id"]]}}}, cookie=dana)[2] == 0

    # one thing of the other project's: not found, by every path that names it
    for path in (f"flow_runs/{theirs['id']}", f"flow_runs/{theirs['id']}/graph-v2",
                 f"flow_run_states/?flow_run_id={theirs['id']}"):
        status, _, answer = call(f"{api}/{path}", cookie=dana)
        assert status == 404, (path, answer)
    assert call(f"{api}/flow_runs/{made['id']}", cookie=dana)[0] == 200
    # a value given twice (the door's check would read one, Prefect the other): refused, naming it
    for path in (f"flow_run_states/?flow_run_id={made['id']}&flow_run_id={theirs['id']}",
                 f"flow_run_states/?flow_run_id={made['id']}&flow%5Frun%5Fid={theirs['id']}",
                 f"task_run_states/?task_run_id={theirs['id']}&task_run_id={theirs['id']}"):
        status, _, answer = call(f"{api}/{path}", cookie=dana)
        assert status == 400 and "given more than once" in answer["detail"], (path, answer)
    status, _, answer = call(f"{api}/logs/filter", "POST", {"logs": {"flow_run_id": {"any_": [theirs["id"]]}}},
                             cookie=dana)
    assert status == 404
    status, _, answer = call(f"{api}/logs/filter", "POST", {"logs": {"flow_run_id": {"any_": [made["id"]]}}},
                             cookie=dana)
    assert status == 200 and isinstance(answer, list)
    status, _, answer = call(f"{api}/logs/filter", "POST", {"logs": {"level": {"ge_": 0}}}, cookie=dana)
    assert status == 422 and "names its flow runs" in answer["detail"]

    # writes: cancel is an editor's, on their project's run alone; no other state change
    status, _, answer = call(f"{api}/flow_runs/{theirs['id']}/set_state", "POST", {"state": {"type": "CANCELLING"}},
                             cookie=dana)
    assert status == 404
    status, _, answer = call(f"{api}/flow_runs/{made['id']}/set_state", "POST", {"state": {"type": "CANCELLING"}},
                             cookie=finn)
    assert status == 403 and "needs editor" in answer["detail"]
    status, _, answer = call(f"{api}/flow_runs/{made['id']}/set_state", "POST", {"state": {"type": "COMPLETED"}},
                             cookie=dana)
    assert status == 403 and "only to cancel" in answer["detail"]
    # what the door does not know is denied: the platform's blocks and variables, deleting runs, other flows
    for method, path, body in (("POST", "block_documents/filter", {}), ("POST", "variables/filter", {}),
                               ("DELETE", f"flow_runs/{made['id']}", None), ("POST", "automations/filter", {}),
                               ("POST", "events/count-by/event", {})):
        status, _, answer = call(f"{api}/{path}", method, body, cookie=dana)
        assert status == 403 and "not open to project members" in answer["detail"], (path, answer)
    # a run's events, as its page asks for them: the project's runs alone, and never every run's at once
    status, _, answer = call(f"{api}/events/filter", "POST", {"filter": {}}, cookie=dana)
    assert status == 422 and "names its flow runs" in answer["detail"]
    for run, expected in ((theirs["id"], 404), (made["id"], 200)):
        status, _, answer = call(f"{api}/events/filter", "POST", {"filter": {
            "any_resource": {"id": [f"prefect.flow-run.{run}"]}}}, cookie=dana)
        assert status == expected, answer
    # nor by a page path that Prefect would route into its API, nor by asking which flows have another's runs
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /runs/../api/variables/filter HTTP/1.1\r\nHost: x\r\nCookie: mlyard_door=" + dana.encode() +
                  b"\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
    status, _, flows = call(f"{api}/flows/filter", "POST", {"flow_runs": {"name": {"any_": [theirs["name"]]}}},
                            cookie=dana)
    assert status == 200 and flows == [], flows
    status, _, answer = call(f"{api}/flows/filter", "POST", {"task_runs": {}}, cookie=dana)
    assert status == 422 and "task runs" in answer["detail"]
    # a write from another site (another port of this machine is another origin) is refused
    for extra in ({"Origin": "http://127.0.0.1:1"}, {"Sec-Fetch-Site": "same-site"}):
        status, _, answer = call(f"{api}/flow_runs/filter", "POST", {}, cookie=dana, headers=extra)
        assert status == 403 and "same origin" in answer["detail"]

    # a bearer key works for a script; a revoked key ends its session at the next request
    assert call(f"{api}/flow_runs/count", "POST", {}, headers={"Authorization": f"Bearer {users['erik']['key']}"})[2] == 1
    _ok(owner("users", "revoke", users["finn"]["key_id"]))
    assert call(f"{api}/flow_runs/filter", "POST", {}, cookie=finn)[0] == 401

    records = json.loads(_ok(owner("audit", "--project", "door-a", "--json")))
    seen = {(r["user"], r["action"], r["result"]) for r in records}
    assert {("dana", "run.start", "ok"), ("dana", "run.start", "refused"), ("finn", "run.start", "refused"),
            ("finn", "run.stop", "refused"), ("dana", "prefect.request", "refused")} <= seen, seen


def test_behind_the_clusters_sign_in_the_proxys_headers_name_the_person_and_nobody_elses_do(door_team, stack):
    """With `door_trusted_proxy` (oauth2-proxy beside the door in its pod, infra/k8s/components/sign-in), the
    user and groups the proxy sends decide who asks; a door without it (every door on one machine) ignores
    such headers as any client could send them."""
    import asyncio

    import httpx

    from mlyard import door_sign_in
    from mlyard.prefect_door import PrefectDoor

    door_url, _ = door_team
    behind = PrefectDoor(stack.api_url, stack.prefect_auth_string, door_sign_in.session_secret("t"), trusted_proxy=True)

    async def asked(*headers: dict) -> list[tuple[int, object]]:  # one event loop: the door's client lives in it
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=behind), base_url="http://door") as client:
            answers = [await client.post("/api/flow_runs/filter", json={}, headers=h) for h in headers]
        return [(a.status_code, a.json()) for a in answers]

    dana, zoe, nobody = asyncio.run(asked(
        {"X-Forwarded-Preferred-Username": "dana"},  # a user here (an editor of door-a): her own roles
        {"X-Forwarded-User": "zoe", "X-Forwarded-Groups": "staff,mlyard:door-b:viewer"},  # known to the groups alone
        {"X-Forwarded-User": "zoe", "X-Forwarded-Groups": "staff"}))
    for (status, found), project in ((dana, "door-a"), (zoe, "door-b")):
        assert status == 200 and found, found
        assert {t for r in found for t in r["tags"] if t.startswith("mlyard.project:")} == {f"mlyard.project:{project}"}
    assert nobody[0] == 403 and "acting in a project" in nobody[1]["detail"], nobody  # signed in, in no project
    # the same headers at a door that trusts no proxy: nobody
    status, _, answer = call(f"{door_url}/api/flow_runs/filter", "POST", {}, headers={
        "X-Forwarded-User": "dana", "X-Forwarded-Preferred-Username": "dana", "X-Forwarded-Groups": "mlyard:admin"})
    assert status == 401, answer
