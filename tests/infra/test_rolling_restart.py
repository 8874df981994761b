"""The endpoint gateway, the mlyard API, MLflow and the Prefect server stay up while the cluster moves them:
under constant requests, a rolling restart of each Deployment (what `kubectl rollout restart` does) and a
node drain's evictions (of those with two replicas) lose no request; the scheduler's rolling restart loses
no scheduled slot.

Kubernetes' own control plane (tests/controlplane.py) does the moving: the Deployment and ReplicaSet
controllers roll the pods (maxSurge 1, maxUnavailable 0, as infra/k8s/base says), the EndpointSlice
controller takes a terminating pod out of the Service, the eviction API holds a drain to the
PodDisruptionBudget. The install's own objects run, each pod as its user on a node played here
(tests/kubelet_node.py) with a network of its own (tests/pod_network.py: its address, its readiness probe,
its preStop); clients reach it through the Service, forwarded as kube-proxy forwards (a kept-alive
connection stays with its pod). The pods read the cluster's catalog (PostgreSQL: tests/cluster_stores.py);
the gateway routes to a model server on this machine, as to a stage's Service."""

from __future__ import annotations

import base64
import os
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from kubelet_node import ClusterApi, NodeKubelet
from pod_moves import INFER, Load, Model, apply_part, endpoint, evict, inferences, pods, settled, wait
from pod_network import PodNetwork, ServiceProxy

ROOT = Path(__file__).resolve().parents[2]
NS = "mlyard-rolling"


@pytest.fixture
def on_cluster(control_plane, cluster_stores, stack, tmp_path):
    """A restricted namespace of its own with the install's ConfigMap and Secrets naming the cluster's catalog
    and MLflow and the test stack's Prefect; one node with a pod network. Returns (api, apply): `apply(name)`
    makes the install's objects of that name (Deployment, Service, PDB, account and Role) and returns
    kube-proxy for its Service."""
    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    prefect = os.environ["PREFECT_API_URL"]
    cluster_stores.namespace(api, NS, {"PREFECT_API_URL": prefect, "MLYARD_PREFECT_API_URL": prefect},
                             {"mlyard-prefect": {"auth-string": stack.prefect_auth_string or "none"}})
    node = NodeKubelet(control_plane, f"rolling-{tmp_path.name[-12:].strip('_-').lower().replace('_', '-')}",
                       str(ROOT), network=PodNetwork())
    proxies: list[ServiceProxy] = []

    def apply(name: str, *more: str) -> ServiceProxy:
        """The objects named `name` (and `more`: an account named otherwise), and kube-proxy for its Service."""
        apply_part(api, NS, name, *more)
        proxies.append(ServiceProxy(api, NS, name))
        return proxies[-1]

    try:
        yield api, apply
    finally:
        for proxy in proxies:
            proxy.close()
        api.drop_namespace(NS, timeout=120)
        node.close()


def _restart_and_drain(api: ClusterApi, name: str, proxy: ServiceProxy, call, also=None) -> str:
    """Under `call`'s constant requests (and `also`'s, on another port of the pods): a rolling restart of
    Deployment `name` (as `kubectl rollout restart` starts it), then a node drain's evictions of its pods,
    one at a time as its budget allows (as `kubectl drain` retries). Asserts that no request failed; returns
    the figures."""
    wait(lambda: settled(api, NS, name), 120, f"{name}'s replicas available")
    wait(lambda: len(proxy.endpoints) == 2, 30, f"both replicas in the Service {name}")
    first = pods(api, NS, name)
    load = Load(call)
    other = Load(also) if also is not None else None
    time.sleep(3)

    began = time.monotonic()
    restarted = {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}}}
    code, doc = api.request("PATCH", api.path("Deployment", NS, name), restarted, "application/merge-patch+json")
    assert code == 200, doc
    wait(lambda: settled(api, NS, name) and not first & pods(api, NS, name), 180, "the rollout replaced both replicas")
    rolled, during = time.monotonic() - began, (load.sent, len(load.failed))
    time.sleep(3)

    began = time.monotonic()
    second = sorted(pods(api, NS, name))
    code, doc = evict(api, NS, second[0])
    assert code == 201, doc
    code, doc = evict(api, NS, second[1])
    assert code == 429 and "disruption budget" in doc["message"], (code, doc)
    refused = 1
    while (code := evict(api, NS, second[1])[0]) == 429:
        refused += 1
        time.sleep(1)
    assert code == 201
    wait(lambda: settled(api, NS, name) and not set(second) & pods(api, NS, name), 180, "the drained replicas replaced")
    drained = time.monotonic() - began
    time.sleep(3)
    load.stop()
    if other is not None:
        other.stop()
        assert other.failed == [], f"{len(other.failed)} of {other.sent} requests failed: {other.failed[:5]}"
    assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
    assert load.sent > 200
    return (f"{name}: rolling restart {rolled:.1f} s ({during[0]} requests sent until it settled, {during[1]} "
            f"failed); drain {drained:.1f} s (the second eviction refused {refused} times by the budget); "
            f"{load.sent} requests in all, {len(load.failed)} failed"
            + (f"; {other.sent} on its other port, {len(other.failed)} failed" if other is not None else ""))


def test_a_rolling_restart_and_a_drain_of_the_gateway_lose_no_request(on_cluster, cluster_stores):
    """Each client on its kept-alive connections (httpx, as the openai client calls an endpoint)."""
    api, apply = on_cluster
    proxy = apply("gateway")
    model = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    name = endpoint(cluster_stores.catalog_url, f"http://127.0.0.1:{model.server_address[1]}")
    url = f"http://{proxy.address[0]}:{proxy.address[1]}/{name}/m/v2/models/m/infer"
    try:
        wait(lambda: settled(api, NS, "gateway"), 120, "the gateway's replicas available")
        wait(lambda: httpx.post(url, json=INFER, timeout=5).status_code == 200, 60, "the endpoint answered")
        before = Model.answered
        figures = _restart_and_drain(api, "gateway", proxy, inferences(url))
        assert Model.answered > before
        print(figures)
    finally:
        model.shutdown()


def test_a_rolling_restart_and_a_drain_of_the_mlyard_api_lose_no_request(on_cluster, cluster_stores):
    """Each call on a new connection, as the CLI's (a process per command) and the SDK's calls are made: a
    query the API answers from the catalog, with the platform's credential. And the Prefect UI's front door
    on the same pods (its own port), as a member's browser calls it: kept-alive connections, the runs page's
    list of flow runs, with the member's key."""
    import urllib.request

    from mlyard.registry import Catalog
    from mlyard.registry.teams import Teams

    api, apply = on_cluster
    proxy = apply("mlyard-api")
    door = ServiceProxy(api, NS, "mlyard-api", "door")
    url = f"http://{proxy.address[0]}:{proxy.address[1]}/v1/queries/templates_list"
    catalog = Catalog(cluster_stores.catalog_url)
    try:
        teams, member = Teams(catalog), f"member{int(time.time())}"
        teams.create_project(member)
        key = teams.create_user(member)[1]
        teams.set_member(member, member, "editor")
    finally:
        catalog.dispose()

    def browse():
        with httpx.Client(base_url=f"http://{door.address[0]}:{door.address[1]}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            while True:
                yield lambda: client.post("/api/flow_runs/filter", json={"limit": 10}).status_code

    def send() -> int:
        request = urllib.request.Request(url, data=b"{}", method="POST", headers={
            "Authorization": f"Bearer {cluster_stores.internal_token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
            return resp.status

    def call():
        while True:
            yield send

    try:
        wait(lambda: settled(api, NS, "mlyard-api"), 180, "the API's replicas available")
        wait(lambda: send() == 200, 60, "the API answered")
        wait(lambda: httpx.post(f"http://{door.address[0]}:{door.address[1]}/api/flow_runs/filter", json={"limit": 1},
                                 headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200, 60,
              "the door answered")
        print(_restart_and_drain(api, "mlyard-api", proxy, call, also=browse))
    finally:
        door.close()


def _mlflow_database(cluster_stores, bucket_prefix: str) -> dict[str, str]:
    """A database of its own for the mlflow pods on the cluster's PostgreSQL, migrated as the install's
    migrate Job does before they start; the mlyard-mlflow Secret's values."""
    import psycopg

    from mlyard.registry.tracking import Tracking

    name = f"mlflow_{int(time.time())}"
    with psycopg.connect(host=str(cluster_stores.pgdata), dbname="postgres", user="postgres",
                         port=int(cluster_stores.catalog_url.rsplit(":", 1)[1].split("/")[0]), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER mlyard")  # the server's superuser, on its private socket
    uri = cluster_stores.catalog_url.rsplit("/", 1)[0] + f"/{name}"
    Tracking(uri.replace("postgresql+psycopg", "postgresql"))  # MLflow's schema
    return {"backend-store-uri": uri.replace("postgresql+psycopg", "postgresql"),
            "artifacts-destination": f"s3://mlyard-cluster/{bucket_prefix}"}


def test_a_rolling_restart_and_a_drain_of_mlflow_lose_no_call(on_cluster, cluster_stores, monkeypatch):
    """MLflow's own client, as every platform process and flow run calls the tracking server (kept-alive
    connections, its retries as shipped), reading the experiments. Its retries would hide a lost call, so
    they are watched: a connection closed as it was reused is retried at once (HTTP/1.1 allows a server
    that), but a retry after a back-off means a connection failed twice in a row, as one does to a pod that
    stopped listening while the Service still sent it new connections."""
    from mlflow.tracking import MlflowClient
    from urllib3.util.retry import Retry

    from mlyard.core.environment import tracking_token

    api, apply = on_cluster
    api.create("Secret", "v1", NS, {"metadata": {"name": "mlyard-mlflow"}, "data": {
        k: base64.b64encode(v.encode()).decode() for k, v in _mlflow_database(cluster_stores, "rolling").items()}})
    proxy = apply("mlflow")
    url = f"http://{proxy.address[0]}:{proxy.address[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", tracking_token(cluster_stores.internal_token))
    latencies: list[float] = []
    backoffs: list[float] = []
    sleep_backoff = Retry._sleep_backoff

    def counted(self: Retry) -> None:
        if (seconds := self.get_backoff_time()) > 0:
            backoffs.append(seconds)
        sleep_backoff(self)

    monkeypatch.setattr(Retry, "_sleep_backoff", counted)

    def call():
        client = MlflowClient(tracking_uri=url)

        def send() -> int:
            started = time.monotonic()
            client.search_experiments(max_results=5)
            latencies.append(time.monotonic() - started)
            return 200

        while True:
            yield send

    wait(lambda: settled(api, NS, "mlflow"), 240, "MLflow's replicas available")
    wait(lambda: MlflowClient(tracking_uri=url).search_experiments(max_results=1) is not None, 60, "MLflow answered")
    backoffs.clear()
    figures = _restart_and_drain(api, "mlflow", proxy, call)
    assert backoffs == [], f"{len(backoffs)} calls retried after a back-off (of {backoffs} s): a connection failed twice"
    print(f"{figures}; the slowest call {max(latencies) * 1000:.0f} ms")


def test_a_rolling_restart_of_the_scheduler_runs_every_slot_once(on_cluster, cluster_stores):
    """The scheduler's two pods rolled while a schedule fires every second: the Lease goes from the old
    holder to a new pod, and every slot from the schedule's start runs exactly once (caught up), none lost."""
    from collections import Counter
    from datetime import datetime, timezone

    from schedule_slots import every_second, finish_all, finisher_of, slots

    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules

    api, apply = on_cluster
    name = f"rolling-{int(time.time())}"
    tag = every_second(cluster_stores.catalog_url, name)
    stop = threading.Event()
    finisher = threading.Thread(target=finisher_of, args=(tag, stop), name="finisher")
    finisher.start()
    try:
        apply("scheduler", "mlyard-scheduler")
        wait(lambda: settled(api, NS, "scheduler"), 180, "the scheduler's replicas available")
        wait(lambda: len(slots(tag)) >= 3, 90, "the schedule's first runs")
        first = pods(api, NS, "scheduler")
        holder = api.get("Lease", NS, "mlyard-scheduler")["spec"]["holderIdentity"]
        assert holder in first
        began = time.monotonic()
        restarted = {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}}}
        code, doc = api.request("PATCH", api.path("Deployment", NS, "scheduler"), restarted, "application/merge-patch+json")
        assert code == 200, doc
        wait(lambda: settled(api, NS, "scheduler") and not first & pods(api, NS, "scheduler"), 240,
              "the rollout replaced both replicas")
        wait(lambda: api.get("Lease", NS, "mlyard-scheduler")["spec"]["holderIdentity"] in pods(api, NS, "scheduler"),
              60, "a new pod holding the Lease")
        rolled = time.monotonic() - began
        until = datetime.now(timezone.utc).replace(microsecond=0).timestamp() - 1

        def caught_up() -> Counter | None:
            seen = Counter(slots(tag))
            last = max(datetime.strptime(t.split(":", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
                       for t in seen)
            return seen if last >= until else None

        seen = wait(caught_up, 60, "the slots up to the end of the rollout")
        assert all(n == 1 for n in seen.values()), [t for t, n in seen.items() if n > 1]
        times = sorted(datetime.strptime(t.split(":", 1)[1], "%Y%m%dT%H%M%SZ") for t in seen)
        gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:])}
        assert gaps == {1.0}, f"a slot was lost: gaps {sorted(gaps)}"
        print(f"scheduler: rolling restart {rolled:.1f} s (the Lease to a new pod); {len(times)} slots, each once")
    finally:  # no scheduler left to make runs (the gpu pool's tests would take them), then none left queued
        api.request("PATCH", api.path("Deployment", NS, "scheduler"), {"spec": {"replicas": 0}},
                    "application/merge-patch+json")
        deadline = time.monotonic() + 60
        while pods(api, NS, "scheduler") and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.set()
        finisher.join(10)
        finish_all(tag)
        catalog = Catalog(cluster_stores.catalog_url)
        try:  # its runs ended (no scheduler is left to see it): their slots marked so, the schedule deleted
            schedules = Schedules(catalog)
            sid = schedules.get(name).id
            schedules.mark([slot.id for slot in schedules.slots(sid, ["STARTED"])], "ENDED")
            schedules.delete(name)
        finally:
            catalog.dispose()


def _prefect_database(cluster_stores) -> str:
    """A database of its own for the prefect-server pods on the cluster's PostgreSQL, migrated as the
    install's migrate Job does (`prefect server database upgrade`); the mlyard-prefect Secret's database-url."""
    import os
    import subprocess
    import sys

    import psycopg

    name = f"prefect_{int(time.time())}"
    with psycopg.connect(host=str(cluster_stores.pgdata), dbname="postgres", user="postgres",
                         port=int(cluster_stores.catalog_url.rsplit(":", 1)[1].split("/")[0]), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER mlyard")
    url = cluster_stores.catalog_url.rsplit("/", 1)[0].replace("postgresql+psycopg", "postgresql+asyncpg") + f"/{name}"
    env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": url, "PREFECT_HOME": str(cluster_stores.pgdata.parent / name)}
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return url


def test_a_rolling_restart_of_the_prefect_server_loses_no_call(on_cluster, cluster_stores):
    """The Prefect server, one replica (its services' broker is in memory: infra/k8s/base/prefect-server.yaml
    says why), rolled as `kubectl rollout restart` rolls it: the new pod serves before the old one goes
    (maxSurge 1, maxUnavailable 0), and the old one keeps serving through its preStop while the Service lets
    go of it. Prefect's own clients call it as workers and flow runs do (kept-alive, the install's auth string,
    the client's retries as shipped), reading flow runs: no call fails."""
    import logging

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    api, apply = on_cluster
    auth = "admin:" + base64.b64encode(os.urandom(12)).decode()
    data = {"database-url": _prefect_database(cluster_stores), "auth-string": auth}
    code, said = api.request("PATCH", api.path("Secret", NS, "mlyard-prefect"), {"data": {
        k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}, "application/merge-patch+json")
    assert code == 200, said
    proxy = apply("prefect-server")
    url = f"http://{proxy.address[0]}:{proxy.address[1]}/api"
    with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
        clients = [get_client(sync_client=True) for _ in range(5)]
    retried: list[str] = []

    class Retries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retryable" in record.getMessage():
                retried.append(record.getMessage()[:200])

    watch, client_log = Retries(), logging.getLogger("prefect.client")
    level = client_log.level
    client_log.addHandler(watch)
    client_log.setLevel(logging.DEBUG)  # where Prefect's client says it retries

    def call():
        client = clients.pop()
        while True:
            yield lambda: client.read_flow_runs(limit=5) is not None and 200

    try:
        wait(lambda: settled(api, NS, "prefect-server"), 240, "the Prefect server available")
        wait(lambda: clients[0].read_flow_runs(limit=1) is not None, 60, "the Prefect server answered")
        first = pods(api, NS, "prefect-server")
        load = Load(call)
        time.sleep(3)
        began = time.monotonic()
        restarted = {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}}}
        code, doc = api.request("PATCH", api.path("Deployment", NS, "prefect-server"), restarted,
                                "application/merge-patch+json")
        assert code == 200, doc
        wait(lambda: settled(api, NS, "prefect-server") and not first & pods(api, NS, "prefect-server"), 240,
              "the rollout replaced the server")
        rolled = time.monotonic() - began
        time.sleep(3)
        load.stop()
    finally:
        client_log.removeHandler(watch)
        client_log.setLevel(level)
    assert load.failed == [], f"{len(load.failed)} of {load.sent} calls failed: {load.failed[:5]}"
    assert load.sent > 100
    print(f"prefect-server: rolling restart {rolled:.1f} s; {load.sent} calls, {len(load.failed)} failed, "
          f"{len(retried)} retried by Prefect's client")
