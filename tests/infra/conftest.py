"""The tests' Kubernetes cluster: Kubernetes' own control plane (tests/controlplane.py, one per worker), a
kubelet playing its nodes on this machine (tests/kubelet_node.py), and the real Prefect Kubernetes worker
(prefect-kubernetes 0.8, its kopf observer included) on the gpu pool (`real_cluster`). Each pod's command
runs here as its container's user (10001), with its volumes laid out as kubelet lays them
(tests/kubelet_sandbox.py) and its environment resolved from the API's objects: the
mlyard-config ConfigMap and the mlyard-settings Secret name the cluster's stores (tests/cluster_stores.py:
an MLflow server, PostgreSQL over TCP, S3), so a flow run in a "pod" reports to the test stack's Prefect
and writes where a pod on a cluster writes. The test's own checks read the same stores (`Cluster.platform`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_stores import ClusterStores
from conftest import free_port
from kube_cluster import NS, ROOT


@pytest.fixture(scope="session")
def cluster_stores(s3_server):
    """The stores a cluster's pods reach over the network (tests/cluster_stores.py), for the session."""
    import cluster_stores as stores

    started = stores.start(s3_server, free_port)
    yield started
    started.close()


@dataclass
class Cluster:
    api: Any  # kubelet_node.ClusterApi, as the cluster's admin
    kubelet: Any  # kubelet_node.NodeKubelet, the GPU node
    stores: ClusterStores
    platform: object  # mlyard.flows.platform.Platform of the cluster's stores
    worker: Any = None  # the gpu pool's Kubernetes worker (Popen)
    start_worker: Any = None  # start_worker(name, **env) -> another worker of the pool, heartbeating (Popen)

    def __iter__(self):  # `api, kubelet = cluster`
        return iter((self.api, self.kubelet))


def _wait_for_worker(worker: int | subprocess.Popen, began: datetime, log: Path, timeout: float = 120,
                     name: str = "kube-test", pool: str = "gpu") -> None:
    """Until the worker `name` has sent a heartbeat to `pool` (it does once its kopf observer is up)."""
    from prefect.client.orchestration import get_client

    from mlyard.tasks.processes import alive

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not any(w.name == name and w.last_heartbeat_time and w.last_heartbeat_time > began
                      for w in client.read_workers_for_work_pool(pool)):
            gone = worker.poll() is not None if isinstance(worker, subprocess.Popen) else not alive(worker)
            if gone or time.monotonic() > deadline:
                pytest.fail(f"the Kubernetes worker did not start within {timeout:.0f} s (gone: {gone}):\n"
                            + log.read_text()[-3000:])
            time.sleep(0.5)


def _cancel_queued_runs(pool: str = "gpu") -> None:
    """Runs of `pool` that earlier tests on this stack queued and left (schedules on train/train-gpu) would be
    this test's worker's to run: cancel them first, so each test's cluster runs only its own."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        while queued := client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING]))),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200):
            for run in queued:
                client.set_flow_run_state(run.id, Cancelled(message="left queued by an earlier test"), force=True)



class Provisioner:
    """What a cluster's storage provisioner does for a claim that waits (the runs' ephemeral `data` volume, a
    StatefulSet's claims): a PersistentVolume of the claim's size, class and access modes, bound to it; the
    real PV controller then binds the claim, and the scheduler places its pod. The node's kubelet lays the
    volume out as a fresh folder of the pod's (kubelet_sandbox.py)."""

    def __init__(self, api) -> None:
        import threading

        self.api, self.made = api, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="provisioner")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                claims = self.api.request("GET", "/api/v1/persistentvolumeclaims")[1]["items"]
            except (OSError, KeyError, TypeError):
                continue
            for claim in claims:
                meta, spec = claim["metadata"], claim["spec"]
                if claim["status"].get("phase") != "Pending" or spec.get("volumeName"):
                    continue
                name = f"pv-{meta['uid']}"
                code, _ = self.api.request("POST", "/api/v1/persistentvolumes", {
                    "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                    "spec": {"capacity": spec["resources"]["requests"], "accessModes": spec["accessModes"],
                             "storageClassName": spec.get("storageClassName") or "",
                             "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{name}"},
                             "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}}})
                if code == 201:
                    self.made.append(name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for name in self.made:
            self.api.request("DELETE", f"/api/v1/persistentvolumes/{name}")


@pytest.fixture
def real_cluster(stack, settings, tmp_path, cluster_stores, monkeypatch, control_plane):
    """What `cluster` is, on Kubernetes' own control plane: the platform's namespace (restricted), ConfigMap,
    settings Secret and the runs' service accounts with their Roles (infra/k8s/base/flow-runs.yaml); a GPU node (8 × NVIDIA-A100-SXM4-80GB) whose kubelet (tests/kubelet_node.py) runs the pods
    bound to it as their users; a provisioner for their claims; the real Prefect Kubernetes worker on the gpu
    pool as the cluster's admin. The Jobs, their pods, the claims of their ephemeral volumes, the binding to the
    node, the tokens and the clean-up are the control plane's."""
    from kubelet_node import ClusterApi, NodeKubelet

    from mlyard.flows.platform import Platform

    _cancel_queued_runs()
    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    cluster_stores.namespace(api, NS)
    for doc in yaml.safe_load_all((ROOT / "infra" / "k8s" / "base" / "flow-runs.yaml").read_text()):
        api.create(doc["kind"], doc["apiVersion"], NS, doc)  # the runs' identities, as the install makes them
    for key, value in cluster_stores.env().items():
        monkeypatch.setenv(key, value)
    provisioner = Provisioner(api)
    node_name = f"gpu-{tmp_path.name[-20:].strip('_-').lower().replace('_', '-')}"
    node = NodeKubelet(control_plane, node_name, str(ROOT), capacity={"nvidia.com/gpu": "8"},
                       labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
    api.pod_logs = node.api.pod_logs  # what the tests read of a pod's output: the node's, as `kubectl logs` is
    kubeconfig = control_plane.kubeconfig(path=tmp_path / "kubeconfig", namespace=NS)
    worker, log, began = _start_worker(kubeconfig, tmp_path, cluster_stores)
    more: list[subprocess.Popen] = []

    def start_worker(name: str, **env: str) -> subprocess.Popen:
        (tmp_path / name).mkdir()
        proc, its_log, its_start = _start_worker(kubeconfig, tmp_path / name, cluster_stores, name, env=env)
        more.append(proc)
        _wait_for_worker(proc, its_start, its_log, name=name)
        return proc

    try:
        _wait_for_worker(worker, began, log)
        yield Cluster(api, node, cluster_stores, Platform(cluster_stores.settings(settings)),  # type: ignore[arg-type]
                      worker, start_worker)
    finally:
        from mlyard.tasks.processes import stop_group

        for proc in [worker, *more]:
            stop_group(proc, 2)
        api.drop_namespace(NS, timeout=120)
        node.close()
        provisioner.close()


def _start_worker(kubeconfig: Path, tmp_path: Path, cluster_stores, name: str = "kube-test",
                  pool: str = "gpu", env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, datetime]:
    """The pool's worker (Prefect's own, tasks/pool_worker.py) on `pool`, in a process of its own, as the worker's
    Deployment runs it:
    Prefect hands a flow run every setting its worker has, and a worker forked from a warm runner would have
    mlyard's (this stack's home, a CA file there), which no worker on a cluster has and a pod's user could not
    read."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": NS,
           "PREFECT_WORKER_QUERY_SECONDS": "0.5", **(env or {})}
    for key in cluster_stores.env():  # the worker is the platform's, with its own settings
        env.pop(key, None)
    env.pop("MLYARD_HOME", None)
    env.pop("PREFECT_API_SSL_CERT_FILE", None)  # this machine's CA file in the stack's home
    env["PREFECT_HOME"] = str(tmp_path / "worker-prefect")  # its own, as the Deployment's /tmp/prefect
    log = tmp_path / "worker.log"
    began = datetime.now(timezone.utc)
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "mlyard.tasks.pool_worker", "--pool", pool,
                                   "--type", "kubernetes", "--name", name], env=env, cwd=tmp_path, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    return worker, log, began


@pytest.fixture
def provisioner(control_plane):
    """A storage provisioner for the control plane's claims (Provisioner), for the test."""
    from kubelet_node import ClusterApi

    running = Provisioner(ClusterApi(control_plane.url, control_plane.ssl_context()))
    yield running
    running.close()


@pytest.fixture
def real_api(tmp_path, monkeypatch, control_plane):
    """Kubernetes' own API server alone, as the cluster's admin, with KUBECONFIG pointing at it (namespace
    mlyard, made for the test and gone after it)."""
    from kubelet_node import ClusterApi

    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    if api.get_object("Namespace", None, NS) is not None:  # type: ignore[arg-type]
        api.drop_namespace(NS)
    api.create("Namespace", "v1", None, {"metadata": {"name": NS}})
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig(path=tmp_path / "kubeconfig", namespace=NS)))
    try:
        yield api
    finally:
        api.drop_namespace(NS)


@pytest.fixture
def kueue(control_plane, tmp_path):
    """Kueue itself (tests/kueue.py) installed on the control plane and running, for the test; it goes with
    its webhooks after it."""
    import kueue as kueue_install
    from kubelet_node import ClusterApi

    if reason := kueue_install.missing():
        pytest.fail(reason)
    running = kueue_install.start(control_plane, tmp_path / "kueue", ClusterApi(control_plane.url,
                                                                                control_plane.ssl_context()))
    try:
        yield running
    finally:
        running.close()


@dataclass
class PlatformNodes:
    api: Any  # kubelet_node.ClusterApi, as the cluster's admin
    nodes: list  # the two NodeKubelets, each with a pod network
    gateway: Any  # pod_network.ServiceProxy: kube-proxy for the gateway's Service, where MLYARD_GATEWAY_URL says
    apply: Any  # apply(name, *more): the install's objects of that name (tests/pod_moves.apply_part)


@pytest.fixture
def platform_as_made() -> dict:
    """What a test module changes of `platform_nodes` (it overrides this fixture): `images`, the nodes' images of
    another release (tests/kubelet.py); `catalog_url`, the catalog the namespace's settings name (the cluster's
    shared one otherwise)."""
    return {}


@pytest.fixture
def platform_nodes(control_plane, cluster_stores, stack, tmp_path, monkeypatch, platform_as_made):
    """The platform's namespace `mlyard` (where the pools' Jobs run) on two nodes with a pod network
    (tests/pod_network.py), as a cluster's platform and its runs share nodes: the install's ConfigMap and
    Secrets naming the cluster's stores, the test stack's Prefect and the gateway's Service (its kube-proxy
    here, `gateway`); the runs' accounts and Roles; a storage provisioner; and the real Prefect Kubernetes
    worker on the cpu pool, where the endpoint flows (a promotion's) run. The install's parts are the
    test's to apply (`apply`)."""
    from kubelet_node import ClusterApi, NodeKubelet
    from pod_moves import apply_part
    from pod_network import PodNetwork, ServiceProxy

    _cancel_queued_runs("cpu")
    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    prefect, gateway_port = os.environ["PREFECT_API_URL"], free_port()
    cluster_stores.namespace(api, NS, {"PREFECT_API_URL": prefect, "MLYARD_PREFECT_API_URL": prefect,
                                       "MLYARD_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}"},
                             {"mlyard-prefect": {"auth-string": stack.prefect_auth_string or "none"},
                              "mlyard-settings": {"mlyard_catalog_url": platform_as_made.get(
                                  "catalog_url", cluster_stores.catalog_url), **cluster_stores.secret_settings}})
    for doc in yaml.safe_load_all((ROOT / "infra" / "k8s" / "base" / "flow-runs.yaml").read_text()):
        api.create(doc["kind"], doc["apiVersion"], NS, doc)
    for key, value in cluster_stores.env().items():
        monkeypatch.setenv(key, value)
    provisioner = Provisioner(api)
    tag = tmp_path.name[-12:].strip("_-").lower().replace("_", "-")
    nodes = [NodeKubelet(control_plane, f"{side}-{tag}", str(ROOT), network=PodNetwork(),
                         images=platform_as_made.get("images")) for side in ("east", "west")]
    gateway = ServiceProxy(api, NS, "gateway", address=("127.0.0.1", gateway_port))
    kubeconfig = control_plane.kubeconfig(path=tmp_path / "kubeconfig", namespace=NS)
    worker, log, began = _start_worker(kubeconfig, tmp_path, cluster_stores, "kube-cpu", pool="cpu")
    try:
        _wait_for_worker(worker, began, log, name="kube-cpu", pool="cpu")
        yield PlatformNodes(api, nodes, gateway, lambda name, *more: apply_part(api, NS, name, *more))
    finally:
        from mlyard.tasks.processes import stop_group

        stop_group(worker, 2)
        gateway.close()
        api.drop_namespace(NS, timeout=120)
        for node in nodes:
            node.close()
        provisioner.close()
