"""Endpoints end to end on the real stack: the endpoint flows start real `mlyard serve` replicas under
the supervisor of `mlyard up`, the real gateway routes to them on its own port, and the CLI runs in a
fresh process without the harness's environment. Nothing is mocked (Kubernetes is tested apart, in
tests/tasks/test_kubernetes.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from test_user_paths import _ok, _one_line_error, mlyard

ROW = [[0.9, 0.1, -0.3, 0.2], [-1.2, -0.4, 0.0, 0.5]]


def call(url: str, token: str | None = None, scheme: str = "Bearer", body: dict | None = None,
         auth: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if auth is not None:
        headers["authorization"] = auth
    elif token is not None:
        headers["authorization"] = f"{scheme} {token}"
    req = urllib.request.Request(url, data=json.dumps(body or {"instances": ROW}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def admin(gw: str, path: str, method: str = "GET") -> bytes:
    """A management route of the gateway, with the platform's internal credential (as mlyard's own calls)."""
    from mlyard.core.connection import internal_headers
    from mlyard.core.settings import Settings

    req = urllib.request.Request(gw + path, method=method, data=b"" if method == "POST" else None,
                                 headers=internal_headers(Settings()))
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def as_gateway(url: str, key: str | None = None) -> bytes:
    """GET a replica's own route with the credential the gateway sends it (each model replica has its own,
    derived from the replicas' one, which only the gateway holds); `key`: that of another replica instead."""
    from urllib.parse import urlsplit

    from mlyard.core.connection import REPLICA_HEADER, internal_token, replica_key_token, replica_token
    from mlyard.core.settings import Settings
    from mlyard.tasks import replicas as files

    settings = Settings()
    token = internal_token(settings)
    assert token
    port = urlsplit(url).port
    key = key or next(k for k, st in files.states(settings.home_dir).items() if st.port == port)
    req = urllib.request.Request(url, headers={REPLICA_HEADER.decode(): replica_key_token(replica_token(token), key)})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


def replica_requests(gw: str, endpoint: str) -> int:
    """Requests the endpoint's replicas have answered, from each replica's own statistics."""
    table = json.loads(admin(gw, "/mlyard/routes"))
    total = 0
    for replicas in table["endpoints"].get(endpoint, {}).get("stages", {}).values():
        for r in replicas:
            stats = json.loads(as_gateway(r["url"] + "/stats"))
            total += sum(m["requests"] for m in stats["models"])
    return total


def routes(gw: str) -> dict:
    return json.loads(admin(gw, "/mlyard/routes"))["endpoints"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def clf(platform, models):
    """Model `clf`: version 1 (champion) and version 2 (challenger), both the test classifier."""
    v1 = platform.models.create_from_directory("clf", models["classifier"], "file://classifier")
    v2 = platform.models.create_from_directory("clf", models["classifier"], "file://classifier")
    platform.models.set_alias("clf", "champion", v1.version)
    platform.models.set_alias("clf", "challenger", v2.version)
    return v1.version, v2.version


@pytest.fixture(scope="module")
def endpoint(stack, settings, clf):
    import mlyard.endpoints as api

    view = api.create({"name": "fraud", "description": "test", "stage": {
        "resources": [{"model": "clf@champion", "pods": 2}]}})
    assert view["status"] == "ACTIVE", view
    yield view
    for ep in api.list_endpoints():  # leave no replica running for later tests
        for st in api.show(ep["name"])["stages"]:
            if not st["default"]:
                api.delete(ep["name"], st["name"])
        api.delete(ep["name"])


def test_deploy_routes_tokens_and_stats(endpoint, settings):
    import mlyard.endpoints as api
    from mlyard.core.connection import gateway_url

    gw = gateway_url(settings)
    url = endpoint["urls"]["default"]["clf"]
    assert url == f"{gw}/fraud/clf/v1/models/clf:predict"
    assert {r["status"] for st in endpoint["stages"] for r in st["resources"]} == {"ACTIVE"}
    assert [r["status"] for r in routes(gw)["fraud"]["stages"]["default"]] == ["HEALTHY", "HEALTHY"]

    # Around the gateway: its management routes need the internal credential, and a replica answers only
    # the gateway's (a port read off the routing table, or found by a scan, gives nothing).
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{gw}/mlyard/routes", timeout=5)
    assert refused.value.code == 401
    replica = routes(gw)["fraud"]["stages"]["default"][0]["url"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{replica}/v1/models/clf:predict", data=json.dumps(
            {"instances": ROW}).encode(), headers={"content-type": "application/json"}), timeout=5)
    assert refused.value.code == 403 and b"answers the mlyard gateway only" in refused.value.read()
    assert json.loads(as_gateway(f"{replica}/v2/models/clf"))["name"] == "clf"
    from mlyard.tasks import replicas as files

    # each replica of a model holds a credential of its own: one replica's opens no other (a model that read
    # its own from its process cannot call its neighbours around the gateway), nor does the replicas' own
    with pytest.raises(urllib.error.HTTPError) as refused:
        as_gateway(f"{replica}/v2/models/clf", key="fraud.default.1.1" if replica.endswith(
            str(files.states(settings.home_dir)["fraud.default.1.0"].port)) else "fraud.default.1.0")
    assert refused.value.code == 403
    assert urllib.request.urlopen(f"{replica}/v2/health/ready", timeout=5).status == 200  # probes need nothing

    # No valid token: 401, and no request reaches a replica.
    before = replica_requests(gw, "fraud")
    other = api.create({"name": "other", "public": True, "stage": {"resources": [{"model": "clf/1"}]}})
    other_token = api.issue_token("other", days=1)["token"]
    expired = api.issue_token("fraud", days=1)
    revoked = api.issue_token("fraud", days=1)
    api.revoke_token("fraud", revoked["id"])
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.tables import EndpointToken

    with Catalog(settings.catalog_db_url).session() as s:
        s.get(EndpointToken, expired["id"]).expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    admin(gw, "/mlyard/reload", "POST")
    for auth in (None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 600, "Bearer wrong",
                 "BackendAI myd_not-a-token", f"Bearer {expired['token']}", f"Bearer {revoked['token']}",
                 f"Bearer {other_token}", "Bearer\t" + revoked["token"], "bearer" + revoked["token"]):
        status, body = call(url, auth=auth)
        assert status == 401, (auth, status, body)
        assert body["error"]
    assert replica_requests(gw, "fraud") == before
    # An open-to-public endpoint needs none.
    status, body = call(other["urls"]["default"]["clf"])
    assert status == 200 and len(body["predictions"]) == 2

    token = api.issue_token("fraud", days=1)["token"]
    for scheme in ("Bearer", "BackendAI"):
        status, body = call(url, token, scheme)
        assert status == 200 and len(body["predictions"]) == 2, body
    # v2 through the gateway, with probabilities: the statistics get the confidence.
    v2 = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": sum(ROW, [])}],
          "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
    status, body = call(f"{gw}/fraud/clf/v2/models/clf/infer", token, body=v2)
    assert status == 200, body
    assert replica_requests(gw, "fraud") == before + 3
    # Unknown model and stage: 404 naming them.
    assert call(f"{gw}/fraud/nope/v1/models/nope:predict", token)[0] == 404
    status, body = call(f"{gw}/fraud/stages/nope/clf/v1/models/clf:predict", token)
    assert status == 404 and "nope" in body["error"]

    # The CLI, as a user runs it: stats per stage and model, with a chart.
    out = json.loads(_ok(mlyard("endpoints", "stats", "fraud", "--since", "10m", "--png", "stats.png", "--json")))
    row = next(r for r in out["stats"] if r["stage"] == "default" and r["model"] == "clf")
    assert row["calls"] == 3 and row["failures"] == 0
    assert sum(row["predictions"].values()) == 6 and row["average_confidence"] is not None
    assert row["latency_ms"]["p50"] > 0 and row["latency_ms"]["p99"] >= row["latency_ms"]["p50"]
    assert Path(out["png"]).stat().st_size > 10_000
    # The same counts for Prometheus, read back by its client's parser.
    from prometheus_client.parser import text_string_to_metric_families

    from mlyard.core.connection import internal_headers
    from mlyard.core.settings import Settings

    metrics = urllib.request.Request(f"{gw}/mlyard/metrics", headers=internal_headers(Settings()))
    with urllib.request.urlopen(metrics, timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    here = {"endpoint": "fraud", "stage": "default", "model": "clf"}
    assert [s.value for s in families["mlyard_gateway_requests"].samples if s.labels == here] == [3]
    shown = json.loads(_ok(mlyard("endpoints", "show", "fraud", "--json")))
    assert shown["stages"][0]["gateway_status"] == "ACTIVE" and len(shown["tokens"]) == 3
    # Inference log records with the seed's fields and the endpoint's id.
    records = api.logs("fraud", tail=50)
    assert records and {"category", "logLevel", "body", "logType", "time", "endpointId", "endpointStageId",
                        "inferenceId", "action", "modelName"} <= set(records[-1])
    assert records[-1]["endpointId"] == str(endpoint["id"])
    # the same records through `mlyard logs`, by endpoint name and by one request's id
    found = [json.loads(x) for x in _ok(mlyard("logs", "-c", "inference", "--endpoint", "fraud", "--since", "10m",
                                               "--json")).splitlines()]
    assert {d["endpointId"] for d in found} == {str(endpoint["id"])} and len(found) >= 3
    one = _ok(mlyard("logs", "--inference", records[-1]["inferenceId"][:10], "--json")).splitlines()
    assert [json.loads(x)["inferenceId"] for x in one] == [records[-1]["inferenceId"]]
    _one_line_error(mlyard("logs", "--endpoint", "no-such-endpoint"), "no-such-endpoint")
    # HEAD through the gateway: answered at once (it waited 5 s for a body that a HEAD answer never has)
    t0 = time.monotonic()
    head = urllib.request.Request(f"{gw}/fraud/clf/v2/models/clf", method="HEAD",
                                  headers={"authorization": f"Bearer {api.issue_token('fraud', days=1)['token']}"})
    with urllib.request.urlopen(head, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b""
    assert time.monotonic() - t0 < 2.0
    api.delete("other")


def test_a_users_api_key_calls_their_projects_endpoints_and_a_projects_rate_limit_holds(endpoint, settings):
    """The real gateway reads users' keys and projects' limits from the catalog (each second): a key of a
    member of the endpoint's project calls it, another project's member's does not, a revoked key stops
    within a catalog read, and over the project's per-caller limit the answer is 429 with Retry-After."""
    from mlyard.core.connection import gateway_url
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.endpoints import Endpoints
    from mlyard.registry.teams import Teams

    catalog = Catalog(settings.catalog_db_url)
    assert Endpoints(catalog).get("fraud")["project"] == "default"  # the project its deploy run was made in
    teams = Teams(catalog)
    teams.create_project("gw-other")
    (viewer, key), (_, other) = teams.create_user("gw-viewer"), teams.create_user("gw-stranger")
    teams.set_member("default", "gw-viewer", "viewer")
    teams.set_member("gw-other", "gw-stranger", "owner")
    url = f"{gateway_url(settings)}/fraud/clf/v1/models/clf:predict"

    def status(token: str) -> int:
        return call(url, token)[0]

    deadline = time.time() + 10
    while status(key) != 200:  # the gateway's next read of the catalog
        assert time.time() < deadline
        time.sleep(0.2)
    assert status(other) == 401
    try:
        teams.set_quota("default", key_rate_limit=2.0)
        deadline = time.time() + 10
        while True:
            got = [call(url, key) for _ in range(4)]
            if got[-1][0] == 429 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert got[-1][0] == 429 and "rate limit" in json.dumps(got[-1][1]), got
    finally:
        teams.set_quota("default", key_rate_limit=None)
    teams.revoke(viewer["key_id"])
    deadline = time.time() + 10
    while status(key) != 401:
        assert time.time() < deadline
        time.sleep(0.2)


def test_rules_are_refused_in_one_line(endpoint, platform, tmp_path):
    import mlyard.endpoints as api
    from mlyard.core.errors import AlreadyExists, ModelInUse, Protected, SpecError

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: fraud2\nstage:\n  resources:\n    - model: nosuch@champion\n")
    _one_line_error(mlyard("endpoints", "create", "-f", str(bad)), "stage.resources[0].model", "nosuch@champion")
    one = {"model": "clf/1"}
    with pytest.raises(AlreadyExists, match="fraud"):
        api.create({"name": "fraud", "stage": {"resources": [one]}})
    with pytest.raises(SpecError, match="pods"):
        api.create({"name": "fraud3", "stage": {"resources": [{**one, "pods": -1}]}})
    with pytest.raises(SpecError, match="at most 8"):
        api.create({"name": "fraud4", "stage": {"resources": [{**one, "pods": 9}]}})
    with pytest.raises(SpecError, match="instance_type"):
        api.create({"name": "fraud5", "stage": {"instance_type": "g2-t4", "resources": [one]}})
    with pytest.raises(SpecError, match="max_replicas"):
        from mlyard.core.specs import load_spec
        from mlyard.core.specs.endpoint import AutoscalingRule

        load_spec(AutoscalingRule, {"type": "scale_up", "metric_name": "rps", "comparator": "GREATER_THAN",
                                    "threshold": 1, "step_size": 1, "min_replicas": 3, "max_replicas": 2})
    with pytest.raises(Protected, match="default stage"):
        api.delete("fraud", "default")
    with pytest.raises(ModelInUse):
        platform.models.delete("clf", "1")
    # nothing half-made: none of the refused endpoints exists (the only ones they could have made)
    assert {"fraud", "fraud2", "fraud3", "fraud4", "fraud5"} & {e["name"] for e in api.list_endpoints()} == {"fraud"}


def test_failed_deploy_rolls_back(endpoint, platform, settings, tmp_path):
    """A version whose model does not load: the replicas start and exit, the flow rolls back, nothing runs."""
    import mlyard.endpoints as api
    from mlyard.core.errors import RunFailed
    from mlyard.tasks import replicas as files

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: no_such_module\n")
    platform.models.create_from_directory("broken", broken, "file://broken", framework="custom")
    with pytest.raises(RunFailed, match="exited"):
        api.create({"name": "broken", "public": True, "stage": {"resources": [{"model": "broken/1", "pods": 2}]}})
    view = api.show("broken")
    assert view["status"] == "CREATE FAILED" and view["stages"][0]["status"] == "CREATE FAILED"
    assert "no_such_module" in view["stages"][0]["reason"] or "exited" in view["stages"][0]["reason"]
    assert not [w for w in files.wanted(settings.home_dir) if w.endpoint == "broken"]
    assert not [s for s in files.states(settings.home_dir).values() if s.key.startswith("broken.")]
    api.delete("broken")


def test_promotion_under_load_loses_nothing_then_kill_and_gateway_restart(endpoint, settings, stack):
    import mlyard.endpoints as api
    from mlyard import stack as stack_mod
    from mlyard.core.connection import gateway_url, read_state
    from mlyard.tasks import replicas as files

    gw = gateway_url(settings)
    token = api.issue_token("fraud", days=1)["token"]
    url = f"{gw}/fraud/clf/v1/models/clf:predict"
    view = api.add_stage("fraud", {"name": "canary", "resources": [{"model": "clf@challenger"}]})
    canary = view["urls"]["stages"]["canary"]["clf"]
    assert call(canary, token)[0] == 200
    old_keys = [w.key for w in files.of_stage(settings.home_dir, "fraud", "default")]
    old_pids = [files.states(settings.home_dir)[k].pid for k in old_keys]

    results: list[int] = []
    stop = threading.Event()

    def load():  # three callers, each at most 50 requests a second (as in test_endpoint_sync.py)
        while not stop.is_set():
            results.append(call(url, token)[0])
            stop.wait(0.02)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        promoted = api.promote("fraud", "canary")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert promoted["default_stage"] == "canary" and [s["name"] for s in promoted["stages"]] == ["canary"]
    assert len(results) > 20 and set(results) == {200}, {s: results.count(s) for s in set(results)}
    assert not any(_alive(pid) for pid in old_pids if pid)  # the old default's replicas stopped
    history = api.history("fraud")
    assert [(h["stage"], h["model"], h["ended_at"] is None) for h in history] == [
        ("default", "clf/1", False), ("canary", "clf/2", True)]

    # SIGKILL the only replica: the supervisor starts it again; meanwhile the gateway answers 503 with
    # Retry-After (it has no other replica), never a broken connection; then the replica serves again.
    key = files.of_stage(settings.home_dir, "fraud", "canary")[0].key
    pid = files.states(settings.home_dir)[key].pid
    os.kill(pid, signal.SIGKILL)
    killed, seen = time.monotonic(), set()
    while True:  # (the sandbox's server ends a moment after its parent: an answer may still come from it)
        status, body = call(url, token)
        seen.add(status)
        st = files.states(settings.home_dir)[key]
        if status == 200 and st.pid != pid:
            break
        assert status == 200 or (status == 503 and "retry" in body["error"]), (status, body)
        assert time.monotonic() - killed < 60, "the killed replica did not come back"
        time.sleep(0.1)
    assert st.restarts == 1 and st.last_exit == -signal.SIGKILL
    assert [r["status"] for r in routes(gw)["fraud"]["stages"]["canary"]] == ["HEALTHY"]

    # The gateway restarts; the replicas do not.
    state = read_state(settings)
    os.kill(state.pids["gateway"], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _alive(state.pids["gateway"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    stack_mod.up(settings, echo=lambda *_: None)
    deadline = time.monotonic() + 30
    while True:
        try:
            if call(url, token)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the gateway did not come back"
        time.sleep(0.2)
    assert files.states(settings.home_dir)[key].pid == st.pid  # the same replica process
    assert api.retry("fraud")["stages"][0]["gateway_status"] == "ACTIVE"  # the stage deploy, by hand


def test_validate_creates_nothing(endpoint, platform, settings):
    import mlyard.endpoints as api
    from mlyard.tasks import replicas as files

    lines: list[str] = []
    result = api.validate({"name": "probe", "stage": {"resources": [{"model": "clf/1"}]}}, echo=lines.append)
    assert result["status"] == "Finished" and result["resources"][0]["status"] == "Finished", result
    assert any("serving clf" in line for line in lines)  # the replica's own log, streamed
    if "broken" not in [m.name for m in platform.models.list()]:
        return
    result = api.validate({"resources": [{"model": "broken/1"}]}, echo=lines.append)
    assert result["status"] == "Failed" and "exited" in result["resources"][0]["reason"]
    assert "probe" not in [e["name"] for e in api.list_endpoints()]  # the only endpoint it could have made
    assert not [w for w in files.wanted(settings.home_dir) if w.endpoint == "probe"]


def test_chat_endpoint_streams_through_the_gateway(endpoint, platform, settings, tmp_path, tiny_chat_model):
    """A registered chat model (parameter task=chat) behind the gateway: the openai client streams
    through it, and `endpoints chat` holds a conversation."""
    import openai

    import mlyard.endpoints as api
    from mlyard import endpoint_chat
    from mlyard.core.connection import gateway_url

    folder = tiny_chat_model(tmp_path / "tinychat")
    platform.models.create_from_directory("tinychat", folder, "file://tinychat", parameters={"task": "chat"},
                                          framework="transformers")
    view = api.create({"name": "chat", "public": True, "stage": {"resources": [{"model": "tinychat/1"}]}})
    client = openai.OpenAI(base_url=f"{gateway_url(settings)}/chat/tinychat/openai/v1", api_key="unused")
    chunks = list(client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=8, stream=True, seed=1))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    said: list[str] = []
    lines = iter(["hello", "and again", ""])
    turns = endpoint_chat.chat("chat", read=lambda _prompt: next(lines),
                     write=lambda text="", **_: said.append(text), max_tokens=6, temperature=0)
    # greedy (temperature 0): the tiny random model answers the same printable text every time (tiny_llm.py);
    # sampled, it could stop at once and write nothing
    first = client.chat.completions.create(model="tinychat", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=6, temperature=0).choices[0].message.content
    assert turns == 2 and first and "".join(said).startswith(first), (said, first)
    api.delete("chat")
    assert view["status"] == "ACTIVE"


def test_autoscaling_rules_scale_replicas_up_and_down(endpoint, settings):
    """Backend.AI rules on a stage: more than 3 requests a second per replica adds one (max 2); under
    0.5 takes it away again (min 1). The gateway's loop applies what serving/autoscale.py decides."""
    import mlyard.endpoints as api
    from mlyard.core.connection import gateway_url

    gw = gateway_url(settings)
    rules = [{"type": "scale_up", "metric_name": "requests_per_second", "comparator": "GREATER_THAN",
              "threshold": 3, "step_size": 1, "max_replicas": 2, "cooldown_seconds": 0},
             {"type": "scale_down", "metric_name": "requests_per_second", "comparator": "LESS_THAN",
              "threshold": 0.5, "step_size": -1, "min_replicas": 1, "cooldown_seconds": 0}]
    view = api.create({"name": "auto", "public": True, "stage": {"autoscaling_rules": rules,
                                                                 "resources": [{"model": "clf/1"}]}})
    assert view["stages"][0]["autoscaling_rules"][0]["threshold"] == 3
    url = view["urls"]["default"]["clf"]

    def replicas() -> list[dict]:
        return routes(gw).get("auto", {}).get("stages", {}).get("default", [])

    deadline = time.monotonic() + 60
    while not (len(replicas()) == 2 and all(r["healthy"] for r in replicas())):
        assert call(url)[0] == 200
        assert time.monotonic() < deadline, replicas()
        time.sleep(0.05)  # about 15 requests a second
    events = json.loads(admin(gw, "/mlyard/routes"))["autoscaling"]
    assert any(e["endpoint"] == "auto" and e["to"] == 2 for e in events)
    deadline = time.monotonic() + 60
    while len(replicas()) != 1:  # no traffic: back to one
        assert time.monotonic() < deadline, replicas()
        time.sleep(0.2)
    assert call(url)[0] == 200
    api.delete("auto")


def test_servers_are_one_stage_endpoints_that_stop_and_start(endpoint, settings):
    """VRidge's web points: RUNNING once it answers; stop frees the replicas and keeps the
    configuration; start brings it back."""
    import mlyard.endpoints as api
    import mlyard.servers as servers
    from mlyard.tasks import replicas as files

    server = servers.server_create("web", "clf/1", public=True)
    assert server["status"] == "RUNNING" and server["replicas"] == 1, server
    assert call(server["url"])[0] == 200
    pids = [s.pid for s in files.states(settings.home_dir).values() if s.key.startswith("web.")]
    stopped = servers.server_stop("web")
    assert stopped["status"] == "STOPPED" and stopped["replicas"] == 0 and stopped["model"] == "clf/1"
    assert not any(_alive(pid) for pid in pids if pid)
    status, body = call(server["url"])
    assert status == 503 and "STOPPED" in body["error"], body
    assert next(s for s in servers.servers() if s["name"] == "web")["status"] == "STOPPED"
    started = servers.server_start("web")
    assert started["status"] == "RUNNING" and call(server["url"])[0] == 200
    assert [h["model"] for h in api.history("web")] == ["clf/1", "clf/1"]  # two runs of the same version
    api.delete("web")


@pytest.fixture
def on_cluster(control_plane, settings, pod, tmp_path, monkeypatch):
    """Kubernetes' own control plane (tests/controlplane.py) as an endpoint's stages meet it: the namespace
    `mlyard` with the install's settings Secret (the replicas' credential), a node of the stages' instance
    type (g2-t4) whose kubelet plays each pod by the `pod` fixture's model server, and kube-proxy for the
    Services' cluster IPs (tests/kube_proxy.py); KUBECONFIG the cluster's admin, as a platform engineer's.
    Yields (the API as the admin, the cluster IPs' proxies)."""
    import base64

    import yaml
    from controlplane import BIN, install_crd
    from kube_proxy import ClusterIPs, StageNode
    from kubelet_node import ClusterApi

    from mlyard.core.connection import internal_token, replica_token

    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    if api.get_object("Namespace", None, "mlyard") is not None:  # type: ignore[arg-type]
        api.drop_namespace("mlyard")
    api.create("Namespace", "v1", None, {"metadata": {"name": "mlyard"}})
    install_crd(api, yaml.safe_load((BIN / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml").read_text()))
    token = replica_token(internal_token(settings) or "")
    api.create("Secret", "v1", "mlyard", {"metadata": {"name": "mlyard-settings"}, "data": {
        "mlyard_replica_token": base64.b64encode(token.encode()).decode()}})
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig(path=tmp_path / "kubeconfig", namespace="mlyard")))
    host, port = pod[7:].split(":")
    node = StageNode(control_plane, f"g2-{tmp_path.name[-12:].strip('_-').lower().replace('_', '-')}", "g2-t4",
                     (host, int(port)))
    proxies = ClusterIPs(api, "mlyard")
    try:
        yield api, proxies
    finally:
        proxies.close()
        node.close()
        api.drop_namespace("mlyard", timeout=120)


STAGE_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget")


def _stage_objects(kube) -> set[tuple[str, str]]:
    return {(kind, name) for kind, name in kube.made("mlyard") if kind in STAGE_KINDS}


def _http_routes(kube) -> list[dict]:
    code, doc = kube.request("GET", "/apis/gateway.networking.k8s.io/v1/namespaces/mlyard/httproutes")
    assert code == 200, doc
    return doc["items"]


def test_a_kubernetes_stage_is_applied_then_rolled_back(endpoint, settings, on_cluster):
    """The Kubernetes runtime of the flow on the control plane (`on_cluster`: its pods made by the real
    controllers and ready on the played node). The gateway here cannot reach the Services' cluster DNS names
    (the default service URL), so routing fails: the flow must then delete every object it made."""
    import mlyard.endpoints as api
    from mlyard.core.errors import RunFailed
    from mlyard.tasks import replicas as files

    kube, _ = on_cluster
    seen: set[tuple[str, str]] = set()
    stop = threading.Event()

    def watch() -> None:  # what the flow made, however briefly
        while not stop.wait(0.1):
            seen.update(_stage_objects(kube))

    threading.Thread(target=watch, daemon=True).start()
    try:
        with pytest.raises(RunFailed, match="routing"):
            api.create({"name": "kube", "public": True, "stage": {"instance_type": "g2-t4", "resources": [
                {"model": "clf/1", "pods": 2, "pod_autoscaler": {"enabled": True, "max_pods": 4}}]}})
    finally:
        stop.set()
    assert sorted(k for k, _ in seen) == sorted(STAGE_KINDS), seen
    assert _stage_objects(kube) == set()  # every one deleted
    stage = api.show("kube")["stages"][0]
    assert stage["status"] == "CREATE FAILED" and stage["gateway_status"] == "STAGE DEPLOY FAIL", stage
    assert "svc.cluster.local" in stage["reason"]
    assert stage["resources"][0]["service_url"] is None  # the rollback took its Service out of routing
    assert not [w for w in files.wanted(settings.home_dir) if w.endpoint == "kube"]
    api.delete("kube")


@pytest.fixture(scope="module")
def pod(stack, settings, clf):
    """A model server as a stage's pod runs it (`mlyard serve`, the replicas' credential from the settings
    Secret, no sandbox of mlyard's: the pod is one): what the tests' kube-proxy forwards Services to."""
    import subprocess
    import sys

    from mlyard.core.connection import internal_token, replica_token
    from mlyard.tasks.replicas import free_port, probe

    port = free_port()
    env = {**os.environ, "MLYARD_REPLICA_TOKEN": replica_token(internal_token(settings) or "")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlyard"), "serve", "models:/clf/1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while probe(url + "/v2/health/ready", 1.0) != 200:
        assert proc.poll() is None and time.monotonic() < deadline, "the pod's model server did not start"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def test_two_kubernetes_stages_route_through_their_services_and_promote(endpoint, settings, on_cluster,
                                                                          monkeypatch):
    """An endpoint of two stages on the control plane (`on_cluster`: the real controllers make and scale each
    stage's pods, the played node runs them by a model server here, kube-proxy is played for the Services'
    cluster IPs). The catalog holds each resource's Service URL, the gateway routes both stages through them,
    the HPA keeps `replicas` through a stage update and a promotion, and the promotion deletes the old
    default's objects and routes."""
    import mlyard.endpoints as api
    from mlyard.core.connection import gateway_url

    gw = gateway_url(settings)
    kube, proxies = on_cluster
    monkeypatch.setenv("MLYARD_KUBE_SERVICE_URL", "http://{cluster_ip}:{port}")  # no cluster DNS here
    # the cluster also routes with the Gateway API: every change keeps the endpoint's HTTPRoute as the catalog is
    monkeypatch.setenv("MLYARD_HTTP_ROUTE_GATEWAY", "gateways/public")
    hpa = {"enabled": True, "max_pods": 4}
    try:
        view = api.create({"name": "kube2", "public": True, "stage": {"instance_type": "g2-t4", "resources": [
            {"model": "clf/1", "pods": 2, "pod_autoscaler": hpa}]}})
        assert view["status"] == "ACTIVE", view
        view = api.add_stage("kube2", {"name": "canary", "instance_type": "g2-t4", "resources": [
            {"model": "clf@challenger", "pod_autoscaler": hpa}]})
        stages = {st["name"]: st for st in view["stages"]}
        default = next(n for n, st in stages.items() if st["default"])
        # each resource's Service URL is in the catalog; the gateway routes each stage through it, healthy
        deployments = {}
        for name, st in stages.items():
            (res,) = st["resources"]
            svc = next(s for s in kube.items("Service", "mlyard") if s["metadata"]["labels"]["mlyard.io/resource"] == str(res["id"]))
            assert res["service_url"] == f"http://{svc['spec']['clusterIP']}:80", res
            assert [(r["url"], r["status"]) for r in routes(gw)["kube2"]["stages"][name]] == [(res["service_url"], "HEALTHY")]
            deployments[name] = next(d["metadata"]["name"] for d in kube.items("Deployment", "mlyard")
                                     if d["metadata"]["labels"]["mlyard.io/resource"] == str(res["id"]))
        for name, url in ((default, view["urls"]["default"]["clf"]), ("canary", view["urls"]["stages"]["canary"]["clf"])):
            service = next(s["metadata"]["name"] for s in kube.items("Service", "mlyard") if s["metadata"]["labels"]["mlyard.io/stage"] == name)
            before = proxies.sent(service)
            status, body = call(url)
            assert status == 200 and len(body["predictions"]) == 2, body
            assert proxies.sent(service) > before, f"{name}'s answer did not come through its Service"
        # the HPA scales the canary; a retry of the ACTIVE stage routes it again and leaves that count alone
        canary = deployments["canary"]
        code, said = kube.request(  # as the HPA controller does: the scale subresource, under its own manager
            "PATCH", kube.path("Deployment", "mlyard", canary, "scale") + "?fieldManager=horizontal-pod-autoscaler",
            {"spec": {"replicas": 3}}, "application/merge-patch+json")
        assert code == 200, said
        api.retry("kube2", "canary")
        assert kube.get("Deployment", "mlyard", canary)["spec"]["replicas"] == 3
        assert kube.owner_of("Deployment", "mlyard", canary, "spec", "replicas") == ["horizontal-pod-autoscaler"]
        # a share of the default URL's traffic goes through the canary's Service, and the HTTPRoute has the same
        import mlyard.promotion as promotion

        services = {s["metadata"]["labels"]["mlyard.io/stage"]: s["metadata"]["name"] for s in kube.items("Service", "mlyard")}
        before = {name: proxies.sent(svc) for name, svc in services.items()}
        promotion.canary("kube2", "canary", weight=50)
        assert all(call(view["urls"]["default"]["clf"])[0] == 200 for _ in range(40))
        assert all(proxies.sent(svc) > before[name] for name, svc in services.items()), before
        (route,) = _http_routes(kube)
        rules = {r["matches"][0]["path"]["value"]: r for r in route["spec"]["rules"]}
        assert [(b["name"], b["weight"]) for b in rules["/kube2/clf/"]["backendRefs"]] == [
            (services[default], 50), (services["canary"], 50)]
        assert set(rules) == {"/kube2/clf/", f"/kube2/stages/{default}/clf/", "/kube2/stages/canary/clf/"}
        # promotion: the canary takes the default route; the old default's objects and route are gone
        promoted = api.promote("kube2", "canary")
        (route,) = _http_routes(kube)
        assert [[b["name"] for b in r["backendRefs"]] for r in route["spec"]["rules"]] == [[services["canary"]]] * 2
        assert [st["name"] for st in promoted["stages"]] == ["canary"] and promoted["stages"][0]["default"]
        assert {d["metadata"]["name"] for d in kube.items("Deployment", "mlyard")} == {canary}
        assert {o["metadata"]["labels"]["mlyard.io/stage"] for kind in ("Service", "HorizontalPodAutoscaler", "NetworkPolicy")
                for o in kube.items(kind, "mlyard")} == {"canary"}
        assert kube.get("Deployment", "mlyard", canary)["spec"]["replicas"] == 3
        assert set(routes(gw)["kube2"]["stages"]) == {"canary"} and default not in routes(gw)["kube2"]["stages"]
        status, body = call(promoted["urls"]["default"]["clf"])
        assert status == 200, body
        api.delete("kube2")
        deadline = time.monotonic() + 30  # the garbage collector takes the ReplicaSets and pods after them
        while _stage_objects(kube) or kube.items("Pod", "mlyard"):
            assert time.monotonic() < deadline, (_stage_objects(kube), kube.items("Pod", "mlyard"))
            time.sleep(0.2)
        deadline = time.monotonic() + 5  # the gateway reads the catalog every second: the endpoint leaves its table
        while "kube2" in routes(gw) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "kube2" not in routes(gw)
    finally:
        if any(ep["name"] == "kube2" for ep in api.list_endpoints()):  # a failure above: clean up while the API runs
            for st in sorted(api.show("kube2")["stages"], key=lambda st: st["default"]):
                api.delete("kube2", None if st["default"] else st["name"])


def test_a_runtime_variant_stage_on_the_cluster_is_its_engines_deployment_behind_the_gateway(
        endpoint, settings, platform, tmp_path, monkeypatch, on_cluster):
    """A `cmd` runtime resource on the control plane (`on_cluster`, as above: its pod played by the `pod`
    fixture's server): its Deployment runs the image and environment the version's service-definition.toml
    gives the variant, with the stage's command as its arguments and the version's files copied to /models
    first; having no health path, it is routed while its pods are ready, and a request passes through its
    Service."""
    import mlyard.endpoints as api
    from mlyard.core.connection import gateway_url

    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "service-definition.toml").write_text('[cmd.environment]\nimage = "registry.local/engine:2"\n'
                                                    'architecture = "x86_64"\n[cmd.environ]\nFROM_FOLDER = "1"\n')
    platform.models.create_from_directory("engine", folder, "file://engine")
    gw = gateway_url(settings)
    kube, _ = on_cluster
    monkeypatch.setenv("MLYARD_KUBE_SERVICE_URL", "http://{cluster_ip}:{port}")
    try:
        view = api.create({"name": "kube3", "public": True, "stage": {"instance_type": "g2-t4", "resources": [
            {"model": "engine/1", "runtime": {"variant": "cmd", "args": ["serve", "--port", "8000"],
                                              "environ": {"FROM_STAGE": "1"}}}]}})
        assert view["status"] == "ACTIVE", view
        (deployment,) = kube.items("Deployment", "mlyard")
        pod = deployment["spec"]["template"]["spec"]
        engine = pod["containers"][0]
        assert engine["image"] == "registry.local/engine:2" and engine["args"] == ["serve", "--port", "8000"]
        assert {"name": "FROM_FOLDER", "value": "1"} in engine["env"] and {"name": "FROM_STAGE", "value": "1"} in engine["env"]
        assert pod["initContainers"][0]["args"][:4] == ["mlyard", "models", "download", "models:/engine/1"]
        assert [r["status"] for r in routes(gw)["kube3"]["stages"]["default"]] == ["HEALTHY"]
        status, body = call(f"{gw}/kube3/engine/v1/models/clf:predict")  # the engine's own route, via its Service
        assert status == 200 and len(body["predictions"]) == 2, body
    finally:
        if any(ep["name"] == "kube3" for ep in api.list_endpoints()):
            api.delete("kube3")
