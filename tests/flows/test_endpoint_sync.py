"""`mlyard endpoints deploy NAME --sync DIR` (AI Toolkit's deploy for inference) on the real stack: the
CLI runs in a fresh process as a user runs it; the pushed folder becomes a model version served by
real `mlyard serve` replicas behind the real gateway; a second push replaces the replicas one at a
time while a load runs, and not one request fails."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from test_user_paths import _ok, mlyard, project

SCORE = """
import json, os, time

VERSION = {version!r}


def init():
    global scale
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.json")) as fh:
        scale = json.load(fh)["scale"]
    time.sleep(0.3)  # a model that takes a while to load: the rolling restart must not route it early


def run(raw):
    return {{"version": VERSION, "sum": sum(json.loads(raw)["data"]) * scale}}
"""


def _push(folder, version: str, scale: int) -> None:
    (folder / "score.py").write_text(SCORE.format(version=version))
    (folder / "model.json").write_text(json.dumps({"scale": scale}))


def call(url: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps({"data": [1, 2, 3]}).encode(),
                                 headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_sync_deploys_then_replaces_replicas_one_at_a_time_under_load(stack, settings, platform):
    import mlyard.endpoints as api
    from mlyard.core.errors import RunFailed, SpecError
    from mlyard.tasks import replicas as files

    folder = project("aca-app")
    (folder / "infra" / "provision").mkdir(parents=True)
    (folder / "infra" / "provision" / "inference.parameters.json").write_text(json.dumps(
        {"parameters": {"maximumInstanceCount": {"value": 2}}}))
    _push(folder, "one", 1)

    # Bad input first: nothing is registered, nothing starts.
    with pytest.raises(SpecError, match="--sync: .*missing"):
        api.deploy("aca", folder / "missing")
    with pytest.raises(SpecError, match="--entry-script: 'nope.py'"):
        api.deploy("aca", folder, entry_script="nope.py")
    (folder / "infra" / "inference.config.json").write_text("{not json")
    with pytest.raises(SpecError, match="--config: .*inference.config.json.*fix or remove it"):
        api.deploy("aca", folder)
    (folder / "infra" / "inference.config.json").write_text(json.dumps({"SUBSCRIPTION_ID": "kept"}))
    with pytest.raises(SpecError, match="--replicas: 3 .* maximumInstanceCount 2"):
        api.deploy("aca", folder, replicas=3)
    assert not any(ep["name"] == "aca" for ep in api.list_endpoints())

    # The first push creates the endpoint (2 replicas, the cap from inference.parameters.json).
    view = json.loads(_ok(mlyard("endpoints", "deploy", "aca", "--sync", str(folder), "--replicas", "2", "--json")))
    st = view["stages"][0]
    assert (view["status"], st["max_replicas"], st["resources"][0]["model"]) == ("ACTIVE", 2, "aca/1"), view
    config = json.loads((folder / "infra" / "inference.config.json").read_text())
    url = config["MLYARD_SCORE_URL"]
    assert config["SUBSCRIPTION_ID"] == "kept"
    assert config["ACA_APP_ENDPOINT"] + "/score" == url == view["urls"]["default"]["aca"]
    token = api.issue_token("aca", days=1)["token"]
    assert call(url, token) == (200, {"version": "one", "sum": 6})
    before = sorted(w.key for w in files.of_stage(settings.home_dir, "aca", "default"))

    # The second push, under load: every request answers 200, first from version one, then from two.
    _push(folder, "two", 10)
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load():  # three callers, each at most 50 requests a second: load, without starving the deploy of CPU
        while not stop.is_set():
            status, body = call(url, token)
            results.append((status, body.get("version", body.get("error", ""))))
            stop.wait(0.02)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        out = _ok(mlyard("endpoints", "deploy", "aca", "--sync", str(folder)))
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert "ACA_APP_ENDPOINT=" in out
    failed = [r for r in results if r[0] != 200]
    assert len(results) > 30 and not failed, failed[:5]
    seen = [v for _, v in results]
    assert seen[0] == "one" and seen[-1] == "two" and set(seen) == {"one", "two"}
    assert call(url, token) == (200, {"version": "two", "sum": 60})
    after = sorted(w.key for w in files.of_stage(settings.home_dir, "aca", "default"))
    assert len(after) == 2 and not set(after) & set(before)  # every replica was replaced, none added for good
    shown = api.show("aca")
    assert shown["stages"][0]["resources"][0]["model"] == "aca/2" and shown["status"] == "ACTIVE"
    assert [(h["model"], h["ended_at"] is None) for h in api.history("aca")] == [("aca/1", False), ("aca/2", True)]
    assert json.loads((folder / "infra" / "inference.config.json").read_text())["MLYARD_MODEL_VERSION"] == "aca/2"

    # A push whose script fails to load is rolled back: version two keeps serving.
    (folder / "score.py").write_text("def init():\n    raise RuntimeError('no model here')\n\ndef run(raw):\n"
                                     "    return raw\n")
    with pytest.raises(RunFailed, match=r"init\(\) failed: RuntimeError: no model here"):
        api.deploy("aca", folder)
    assert call(url, token) == (200, {"version": "two", "sum": 60})
    shown = api.show("aca")
    assert shown["stages"][0]["resources"][0]["model"] == "aca/2" and "rolled back" in shown["stages"][0]["reason"]
    assert sorted(w.key for w in files.of_stage(settings.home_dir, "aca", "default")) == after
    assert [v.version for v in platform.models.get("aca").versions] == ["1", "2"]  # the failed push's is gone

    api.delete("aca")
