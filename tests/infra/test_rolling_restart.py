"""The endpoint gateway stays up while the cluster moves it: under constant requests, a rolling restart of
its Deployment (what `kubectl rollout restart` does) and a node drain's evictions lose no request.

Kubernetes' own control plane (tests/controlplane.py) does the moving: the Deployment and ReplicaSet
controllers roll the pods (maxSurge 1, maxUnavailable 0, as infra/k8s/base/gateway.yaml says), the
EndpointSlice controller takes a terminating pod out of the Service, the eviction API holds a drain to the
PodDisruptionBudget. The install's own gateway objects run, each pod as the gateway's user on a node played
here (tests/kubelet_node.py) with a network of its own (tests/pod_network.py: its address, its readiness
probe, its preStop); clients reach it through the Service, forwarded as kube-proxy forwards (a kept-alive
connection stays with its pod). The gateway reads the cluster's catalog (PostgreSQL: tests/cluster_stores.py)
and routes to a model server on this machine, as to a stage's Service."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from kubelet_node import ClusterApi, NodeKubelet
from pod_network import PodNetwork, ServiceProxy

ROOT = Path(__file__).resolve().parents[2]
NS = "mlyard-rolling"
LABEL = "app.kubernetes.io%2Fname%3Dgateway"


class _Model(BaseHTTPRequestHandler):
    """A stage's model server: ready, and each inference answered after 20 ms (so that some are in flight)."""
    protocol_version = "HTTP/1.1"
    answered = 0

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(b'{"ready": true}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.02)
        _Model.answered += 1
        self._send(json.dumps({"model_name": "m", "outputs": [{"name": "y", "data": [1]}]}).encode())


def _endpoint(catalog_url: str, upstream: str) -> str:
    """A public endpoint whose default stage runs on the cluster: its resource routed to `upstream`."""
    from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints

    name = f"rolling-{int(time.time())}"
    catalog = Catalog(catalog_url)
    try:
        endpoints = Endpoints(catalog)
        view = endpoints.create(EndpointSpec(name=name, public=True, stage=StageSpec(
            instance_type="m2.c4m8", resources=[StageResourceSpec(model="m/1")])), [("m", "1")])
        rid = view["stages"][0]["resources"][0]["id"]
        endpoints.set_status(name, "ACTIVE", "default", rid)
        endpoints.set_status(name, "ACTIVE", "default")
        endpoints.set_status(name, "ACTIVE")
        endpoints.set_service_urls(name, "default", {rid: upstream})
    finally:
        catalog.dispose()
    return name


@pytest.fixture
def gateway_on_cluster(control_plane, cluster_stores, tmp_path):
    """The install's gateway Deployment, Service and PDB in a restricted namespace of their own, with the
    settings Secret naming the cluster's catalog; one node with a pod network; kube-proxy for the Service."""
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.tasks.cluster import render

    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    if api.get_object("Namespace", None, NS) is not None:  # type: ignore[arg-type]
        api.drop_namespace(NS)
    api.create("Namespace", "v1", None, {"metadata": {"name": NS, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}})
    api.create("ConfigMap", "v1", NS, {"metadata": {"name": "mlyard-config"}, "data": {
        "MLYARD_MLFLOW_TRACKING_URI": cluster_stores.mlflow_uri, "MLYARD_KUBE_NAMESPACE": NS,
        "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}})
    for name, data in (("mlyard-settings", {"mlyard_catalog_url": cluster_stores.catalog_url,
                                            **cluster_stores.secret_settings}),
                       ("mlyard-prefect", {"auth-string": "admin:unused"})):
        api.create("Secret", "v1", NS, {"metadata": {"name": name}, "data": {
            k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
    node = NodeKubelet(control_plane, f"rolling-{tmp_path.name[-12:].strip('_-').lower().replace('_', '-')}",
                       str(ROOT), network=PodNetwork())
    for obj in render(ClusterValues(overlay="dev", namespace=NS)):
        if obj["metadata"]["name"] == "gateway" and obj["kind"] in ("Deployment", "Service", "PodDisruptionBudget"):
            api.create(obj["kind"], obj["apiVersion"], NS, {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
    proxy = ServiceProxy(api, NS, "gateway")
    try:
        yield api, node, proxy
    finally:
        proxy.close()
        api.drop_namespace(NS, timeout=120)
        node.close()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s")


def _pods(api: ClusterApi) -> list[dict]:
    code, doc = api.request("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector={LABEL}")
    assert code == 200, doc
    return doc["items"]


def _settled(api: ClusterApi) -> bool:
    """The rollout done: every replica updated and available, and no old pod left (terminated)."""
    d = api.get("Deployment", NS, "gateway")
    st = d.get("status") or {}
    want = d["spec"]["replicas"]
    return (st.get("observedGeneration", 0) >= d["metadata"]["generation"] and st.get("updatedReplicas") == want
            and st.get("availableReplicas") == want and st.get("replicas") == want and len(_pods(api)) == want)


def _evict(api: ClusterApi, pod: str) -> tuple[int, dict]:
    return api.request("POST", f"/api/v1/namespaces/{NS}/pods/{pod}/eviction", {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": NS}})


class Load:
    """Clients calling the endpoint through the Service without a pause, each on its kept-alive connections
    (httpx, as the openai client calls), as a model's users would."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.sent, self.failed = url, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _call(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                self.sent += 1
                try:
                    r = client.post(self.url, json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                                "data": [1.0]}]})
                    if r.status_code != 200:
                        self.failed.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failed.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(35)


def test_a_rolling_restart_and_a_drain_of_the_gateway_lose_no_request(gateway_on_cluster, cluster_stores):
    api, node, proxy = gateway_on_cluster
    model = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    name = _endpoint(cluster_stores.catalog_url, f"http://127.0.0.1:{model.server_address[1]}")
    url = f"http://{proxy.address[0]}:{proxy.address[1]}/{name}/m/v2/models/m/infer"
    try:
        _wait(lambda: _settled(api), 120, "the gateway's two replicas available")
        try:
            _wait(lambda: len(proxy.endpoints) == 2, 30, "both replicas in the Service")
        except AssertionError:
            print(json.dumps(api.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices")[1], indent=1)[:4000])
            print(json.dumps([p["status"] for p in _pods(api)], indent=1)[:3000])
            raise
        _wait(lambda: httpx.post(url, json={}, timeout=5).status_code == 200, 60, "the endpoint answered")
        first = {p["metadata"]["name"] for p in _pods(api)}
        load = Load(url)
        time.sleep(3)

        # 1. a rolling restart, as `kubectl rollout restart deployment/gateway` starts it
        began = time.monotonic()
        restarted = {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}}}
        code, doc = api.request("PATCH", api.path("Deployment", NS, "gateway"), restarted, "application/merge-patch+json")
        assert code == 200, doc
        _wait(lambda: _settled(api) and not first & {p["metadata"]["name"] for p in _pods(api)}, 180,
              "the rollout replaced both replicas")
        rolled = time.monotonic() - began
        during_restart = (load.sent, len(load.failed))
        time.sleep(3)

        # 2. a node drain: each pod evicted in turn; the budget holds the second until the first's successor is ready
        began = time.monotonic()
        second = sorted(p["metadata"]["name"] for p in _pods(api))
        code, doc = _evict(api, second[0])
        assert code == 201, doc
        code, doc = _evict(api, second[1])
        assert code == 429 and "disruption budget" in doc["message"], (code, doc)
        refused = 1
        while (code := _evict(api, second[1])[0]) == 429:  # as `kubectl drain` retries
            refused += 1
            time.sleep(1)
        assert code == 201
        _wait(lambda: _settled(api) and not set(second) & {p["metadata"]["name"] for p in _pods(api)}, 180,
              "the drained replicas replaced")
        drained = time.monotonic() - began
        time.sleep(3)
        load.stop()
        assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
        assert load.sent > 200 and _Model.answered >= load.sent
        print(f"rolling restart: {rolled:.1f} s, {during_restart[0]} requests until it settled, "
              f"{during_restart[1]} failed; drain: {drained:.1f} s (second eviction refused {refused} times); "
              f"{load.sent} requests in all, {len(load.failed)} failed; connections per pod {proxy.connections}")
    finally:
        model.shutdown()
