"""What the tests that move the platform's pods under load share (tests/infra/test_rolling_restart.py,
tests/infra/test_node_drain.py): a stage's model server, clients calling without a pause, an endpoint in the
cluster's catalog, and what `kubectl rollout status` and `kubectl drain` wait for and send."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx


class Model(BaseHTTPRequestHandler):
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
        Model.answered += 1
        self._send(json.dumps({"model_name": "m", "outputs": [{"name": "y", "data": [1]}]}).encode())


def endpoint(catalog_url: str, upstream: str, stages: tuple[str, ...] = (), name: str | None = None) -> str:
    """A public endpoint (`name`, or one of the time) whose default stage runs on the cluster, its resource
    routed to `upstream`; and `stages`, more ACTIVE stages of the same model routed there too."""
    from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints

    name = name or f"rolling-{int(time.time())}"
    catalog = Catalog(catalog_url)
    try:
        endpoints = Endpoints(catalog)
        resources = [StageResourceSpec(model="m/1")]

        def activate(view: dict, stage: str) -> None:  # as the endpoint flows leave a stage they made
            rid = next(st for st in view["stages"] if st["name"] == stage)["resources"][0]["id"]
            endpoints.set_status(name, "ACTIVE", stage, rid)
            endpoints.set_status(name, "ACTIVE", stage)
            endpoints.set_service_urls(name, stage, {rid: upstream})
            endpoints.set_status(name, "ACTIVE")

        view = endpoints.create(EndpointSpec(name=name, public=True, stage=StageSpec(
            instance_type="m2.c4m8", resources=resources)), [("m", "1")])
        activate(view, view["stages"][0]["name"])
        for stage in stages:
            activate(endpoints.add_stage(name, StageSpec(name=stage, instance_type="m2.c4m8", resources=resources),
                                         [("m", "1")]), stage)
    finally:
        catalog.dispose()
    return name


INFER = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}  # one V2 inference request


def inferences(url: str):
    """`call` for Load: each client posts INFER to `url` on its own kept-alive connection (httpx, as the openai
    client calls an endpoint)."""
    def call():
        with httpx.Client(timeout=30) as client:
            while True:
                yield lambda: client.post(url, json=INFER).status_code

    return call


def wait(predicate, timeout: float, what: str):
    """`predicate()`'s first true value within `timeout` s (a request that fails counts as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except (httpx.HTTPError, OSError):  # a request through a Service none of whose pods is ready yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s")


def pods(api, ns: str, name: str) -> set[str]:
    """The pods of the install's part `name` (its app.kubernetes.io/name label)."""
    code, doc = api.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io%2Fname%3D{name}")
    assert code == 200, doc
    return {p["metadata"]["name"] for p in doc["items"]}


def settled(api, ns: str, name: str) -> bool:
    """The rollout done: every replica updated and available, and no old pod left (terminated)."""
    d = api.get("Deployment", ns, name)
    st = d.get("status") or {}
    want = d["spec"]["replicas"]
    return (st.get("observedGeneration", 0) >= d["metadata"]["generation"] and st.get("updatedReplicas") == want
            and st.get("availableReplicas") == want and st.get("replicas") == want and len(pods(api, ns, name)) == want)


def evict(api, ns: str, pod: str) -> tuple[int, dict]:
    """The eviction API, as `kubectl drain` calls it: 201, or 429 while the pod's budget allows none."""
    return api.request("POST", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}})


class Load:
    """Clients calling without a pause, each as `call()` calls (see the tests), counting what fails."""

    def __init__(self, call, clients: int = 4):
        self.sent, self.failed = 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(call,), daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self, call) -> None:
        for send in call():
            if self._stop.is_set():
                return
            self.sent += 1
            try:
                if (status := send()) != 200:
                    self.failed.append(str(status))
            except Exception as exc:  # noqa: BLE001 - any failed call counts (an HTTP error, MLflow's own)
                self.failed.append(f"{type(exc).__name__}: {exc}"[:300])

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(35)


PART_KINDS = ("Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding")


def apply_part(api, ns: str, name: str, *more: str) -> None:
    """The install's objects named `name` (and `more`: an account named otherwise) made in `ns` as the dev
    overlay renders them: its Deployment, Service, budget, account and Role."""
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.tasks.cluster import render

    for obj in render(ClusterValues(overlay="dev", namespace=ns)):
        if obj["metadata"]["name"] in (name, *more) and obj["kind"] in PART_KINDS:
            api.create(obj["kind"], obj["apiVersion"], ns, {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})


def account_token(api, ns: str, account: str) -> str:
    """The install's `account`, its Role and binding made in `ns` as the manifests make them; a token the API
    server issues to it (what its pods' token is)."""
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.tasks.cluster import render

    for obj in render(ClusterValues(overlay="dev", namespace=ns)):
        if obj["metadata"]["name"] == account and obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            api.create(obj["kind"], obj["apiVersion"], ns, {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
    code, doc = api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    assert code == 201, doc
    return doc["status"]["token"]


def account_client(api, plane, ns: str, account: str):
    """A Kubernetes client as the install's `account` (account_token)."""
    from kubernetes import client

    conf = client.Configuration()
    conf.host, conf.ssl_ca_cert = plane.url, str(plane.ca)
    conf.api_key, conf.api_key_prefix = {"authorization": account_token(api, ns, account)}, {"authorization": "Bearer"}
    return client.ApiClient(conf)
