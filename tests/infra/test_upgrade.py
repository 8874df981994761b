"""An upgrade from the previous release to this one, as a cluster takes it (issue 70 §2): a populated install
of release N-1 under load, then release N's migration Job, then its Deployments rolled by Kubernetes' own
controllers (maxSurge 1, maxUnavailable 0), while a training of release N-1 runs and clients keep calling.

Release N-1 is the commit PREVIOUS, made here as its image would be: its files (`git archive`) and an
environment of its own whose `mlyard` is that checkout's (the same third-party packages as this one's), so
that a pod whose image is `mlyard:previous` runs N-1's code and any other runs this checkout's
(tests/kubelet.py `images`). N-1 migrates a new catalog database and fills it with its own code (a project,
a member and their key, an endpoint and its token); its gateway and API are installed from its own render.

What must hold: N's migration runs while N-1's pods serve (they keep answering on the schema it leaves, the
skew window); no request through the gateway (with the endpoint's token) and no member call through the
API (with the key) fails before, during or after; the training N-1 started completes; the key and the token
still answer on N's pods; the catalog's stamp says N migrated it.

PREVIOUS moves with the releases: the last commit of the release before this checkout's. A clone without
that commit (a shallow one) fails here, saying so."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from kube_cluster import NS, final
from pod_moves import INFER, Load, Model, inferences, pods, settled, wait
from pod_network import ServiceProxy
from releases import release_tree

PREVIOUS = "a3fc4c6"  # main as CI last passed it before the skew window's test: release N-1
PREVIOUS_IMAGE = "mlyard:previous"
PARTS = ("gateway", "mlyard-api")


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> Path:
    """Release N-1 as its image holds it (tests/releases.py)."""
    return release_tree(tmp_path_factory.mktemp("previous-release"), PREVIOUS)


def _in_previous(tree: Path, script: str, **env: str) -> str:
    """`script` run by release N-1's Python in its checkout; its output."""
    done = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", textwrap.dedent(script)], cwd=tree,
                          env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
                               "MLYARD_HOME": str(tree / ".home"), **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def platform_as_made(previous, cluster_stores) -> dict:
    """`platform_nodes` with release N-1's image on its nodes and a catalog of its own, made by N-1's
    migration (as N-1's Job left it)."""
    import psycopg

    name = f"upgrade_{int(time.time())}"
    port = int(cluster_stores.catalog_url.rsplit(":", 1)[1].split("/")[0])
    with psycopg.connect(host=str(cluster_stores.pgdata), dbname="postgres", user="postgres", port=port,
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER mlyard")
    url = cluster_stores.catalog_url.rsplit("/", 1)[0] + f"/{name}"
    said = _in_previous(previous, "from mlyard.registry.migrate import main; raise SystemExit(main())",
                        MLYARD_CATALOG_URL=url)
    assert said.startswith("catalog: migrated from an empty database"), said
    return {"images": {PREVIOUS_IMAGE: str(previous)}, "catalog_url": url}


def _populate(tree: Path, url: str, upstream: str) -> dict[str, str]:
    """With release N-1's code: a project, a member (editor) and their key; an endpoint of the project whose
    stage is routed to `upstream`, and a token of it."""
    out = _in_previous(tree, f"""
        import json
        from datetime import datetime, timedelta, timezone
        from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
        from mlyard.registry import Catalog
        from mlyard.registry.endpoints import Endpoints
        from mlyard.registry.teams import Teams

        catalog = Catalog({url!r})
        teams = Teams(catalog)
        teams.create_project("vision")
        key = teams.create_user("ada")[1]
        teams.set_member("vision", "ada", "editor")
        endpoints = Endpoints(catalog)
        view = endpoints.create(EndpointSpec(name="classify", stage=StageSpec(
            instance_type="m2.c4m8", resources=[StageResourceSpec(model="m/1")])), [("m", "1")], project="vision")
        stage = view["stages"][0]["name"]
        rid = view["stages"][0]["resources"][0]["id"]
        endpoints.set_status("classify", "ACTIVE", stage, rid)
        endpoints.set_status("classify", "ACTIVE", stage)
        endpoints.set_service_urls("classify", stage, {{rid: {upstream!r}}})
        endpoints.set_status("classify", "ACTIVE")
        token = endpoints.issue_token("classify", datetime.now(timezone.utc) + timedelta(days=1))["token"]
        print(json.dumps({{"key": key, "token": token}}))
    """, MLYARD_CATALOG_URL=url)
    return json.loads(out.strip().splitlines()[-1])


def _rendered(tree: Path | None) -> list[dict]:
    """The dev overlay's objects as a release renders them: N-1's (its checkout's render, its image named
    PREVIOUS_IMAGE) or, for None, this checkout's."""
    script = """
        import json
        from mlyard.core.specs.cluster import ClusterValues
        from mlyard.tasks.cluster import render
        print(json.dumps(render(ClusterValues(overlay="dev", namespace=%r))))
    """ % NS
    if tree is None:
        from mlyard.core.specs.cluster import ClusterValues
        from mlyard.tasks.cluster import render

        return render(ClusterValues(overlay="dev", namespace=NS))
    text = _in_previous(tree, script).replace('"mlyard:0.1.0"', json.dumps(PREVIOUS_IMAGE))
    return json.loads(text)


def _apply(api, objs: list[dict], names: tuple[str, ...], kinds: tuple[str, ...]) -> None:
    """Server-side apply of the objects of `kinds` named `names`, as `mlyard k8s apply` applies them."""
    for obj in objs:
        if obj["metadata"]["name"] in names and obj["kind"] in kinds:
            path = api.path(obj["kind"], NS, obj["metadata"]["name"]) + "?fieldManager=mlyard&force=true"
            code, doc = api.request("PATCH", path, {**obj, "metadata": {**obj["metadata"], "namespace": NS}},
                                    "application/apply-patch+yaml")
            assert code in (200, 201), (obj["kind"], obj["metadata"]["name"], code, doc)


def _migration_job(api, nodes, objs: list[dict]) -> str:
    """Release N's migration Job, made and run to its end by the Job controller and a node; its log. The
    cluster's MLflow and Prefect are the test stack's, whose schemas are their own: the Job migrates the
    catalog alone here (what an upgrade from N-1 changes)."""
    job = next(o for o in objs if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] not in (
        "MLFLOW_BACKEND_STORE_URI", "PREFECT_SERVER_DATABASE_CONNECTION_URL")]
    _apply(api, [job], (job["metadata"]["name"],), ("Job",))

    def ended():
        status = api.get("Job", NS, job["metadata"]["name"]).get("status") or {}
        return status if status.get("succeeded") or status.get("failed") else None

    status = wait(ended, 180, "the migration Job ended")
    pod = next(p for p in api.items("Pod", NS) if p["metadata"]["name"].startswith(job["metadata"]["name"]))
    log = "".join(node.node_api.pod_logs.get((NS, pod["metadata"]["name"]), "") for node in nodes)
    assert status.get("succeeded"), (status, log)
    return log


def _images(api) -> dict[str, str]:
    """Each pod of the PARTS -> its image."""
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in api.items("Pod", NS)
            if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/name") in PARTS}


def _training(src: Path) -> str:
    """A training queued on the cpu pool in release N-1's image, as a member's `mlyard train --submit` on
    N-1 queued it; its run's id."""
    from prefect.deployments import run_deployment

    from mlyard.core.settings import Settings
    from mlyard.core.specs import TrainingSpec
    from mlyard.uploads import for_cluster

    training = for_cluster(TrainingSpec(name="across-the-upgrade", experiment="upgrade", source_uri=str(src),
                                        entry_point="main.py"), Settings())
    run = run_deployment("train/train-kubernetes", parameters={"spec": training.model_dump(mode="json")},
                         job_variables={**training.job_variables(), "image": PREVIOUS_IMAGE}, timeout=0)
    return str(run.id)


def test_an_upgrade_from_the_previous_release_loses_no_request_run_key_or_token(
        previous, platform_as_made, platform_nodes, cluster_stores, algorithm):
    from prefect.client.orchestration import get_client

    from mlyard.registry import Catalog
    from mlyard.registry.catalog import HEAD, STAMP

    api, url = platform_nodes.api, platform_as_made["catalog_url"]
    model = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    made = _populate(previous, url, f"http://127.0.0.1:{model.server_address[1]}")
    _apply(api, _rendered(previous), PARTS, ("Deployment", "Service", "PodDisruptionBudget", "ServiceAccount",
                                             "Role", "RoleBinding"))
    door = ServiceProxy(api, NS, "mlyard-api")
    gateway = platform_nodes.gateway
    infer = f"http://{gateway.address[0]}:{gateway.address[1]}/classify/m/v2/models/m/infer"
    member = f"http://{door.address[0]}:{door.address[1]}/v1/queries/projects_list"

    def ask() -> int:  # the member's call, a new connection each (a CLI command's, an SDK call's)
        request = urllib.request.Request(member, data=b"{}", method="POST", headers={
            "Authorization": f"Bearer {made['key']}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert any(p["name"] == "vision" for p in json.loads(resp.read())), "the member's project"
            return resp.status

    def asks():
        while True:
            yield ask

    def with_token(call):
        def calls():
            with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {made['token']}"}) as client:
                for _ in call():
                    yield lambda: client.post(infer, json=INFER).status_code
        return calls

    try:
        for part in PARTS:
            wait(lambda part=part: settled(api, NS, part), 180, f"release N-1's {part} available")
        old = {part: pods(api, NS, part) for part in PARTS}
        assert set(_images(api).values()) == {PREVIOUS_IMAGE}
        wait(lambda: ask() == 200, 60, "release N-1's API answered the member")
        wait(lambda: httpx.post(infer, json=INFER, timeout=5, headers={
            "Authorization": f"Bearer {made['token']}"}).status_code == 200, 60, "release N-1's gateway answered")
        run_id = _training(algorithm("import time\nfor i in range(40):\n    print(f'loss={1 / (i + 1):.4f}', "
                                     "flush=True)\n    time.sleep(1.5)\nprint('accuracy=0.9', flush=True)\n"))
        with get_client(sync_client=True) as client:
            wait(lambda: client.read_flow_run(run_id).state.is_running(), 240, "release N-1's training running")
        requests, calls = Load(with_token(inferences(infer))), Load(asks, clients=2)
        began = time.monotonic()

        said = _migration_job(api, platform_nodes.nodes, _rendered(None))  # release N: its migration first, as `mlyard k8s apply` runs it
        migrated = time.monotonic() - began
        time.sleep(3)  # N-1's pods on N's schema
        skew = (requests.sent, len(requests.failed), calls.sent, len(calls.failed))
        _apply(api, _rendered(None), PARTS, ("Deployment",))
        for part in PARTS:
            wait(lambda part=part: settled(api, NS, part) and not old[part] & pods(api, NS, part), 240,
                 f"release N's {part} rolled out")
        rolled = time.monotonic() - began
        time.sleep(3)
        requests.stop()
        calls.stop()
        with get_client(sync_client=True) as client:
            running = client.read_flow_run(run_id).state.name
        done = final(run_id, timeout=300)
    finally:
        door.close()
        model.shutdown()
    print(f"upgrade {PREVIOUS} -> this checkout: migration Job {migrated:.1f} s ({said.strip()!r}), rollout of "
          f"{', '.join(PARTS)} done {rolled:.1f} s after it began; during the migration N-1's pods took {skew[0]} "
          f"inferences ({skew[1]} failed) and {skew[2]} member calls ({skew[3]} failed); in all {requests.sent} "
          f"inferences ({len(requests.failed)} failed), {calls.sent} member calls ({len(calls.failed)} failed); the "
          f"training was {running} when the rollout ended and ended {done.state.name}")
    assert requests.failed == [] and calls.failed == [], (requests.failed[:5], calls.failed[:5])
    assert requests.sent > 100 and calls.sent > 20
    assert done.state.is_completed(), done.state
    assert PREVIOUS_IMAGE not in _images(api).values()
    assert ask() == 200  # the key, on N's API
    assert httpx.post(infer, json=INFER, timeout=10, headers={  # the token, on N's gateway
        "Authorization": f"Bearer {made['token']}"}).status_code == 200
    catalog = Catalog(url)
    try:
        with catalog.engine.connect() as conn:
            stamp = conn.execute(STAMP.select()).mappings().one()
    finally:
        catalog.dispose()
    assert stamp["revision"] == HEAD, stamp
