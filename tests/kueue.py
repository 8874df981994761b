"""Kueue itself on the tests' control plane (tests/controlplane.py): the controller manager of
sigs.k8s.io/kueue (the release tests/controlplane/build.sh names, built by it), installed from that
release's own CRDs and webhook manifests, as its release manifests install it, with Kueue's defaults
where the tests do not need others:

- Its webhooks are the API server's to call, as on a cluster: the Service `kueue-system/kueue-webhook-service`
  has one endpoint, an address of Kueue's own on `lo` (10.250.x.y, as tests/pod_network.py gives pods), and
  the API server, run with `--enable-aggregator-routing`, calls that endpoint and checks the certificate
  Kueue's cert rotator made for the Service's name (`internalCertManagement`, Kueue's default).
- It manages `batch/v1` Jobs (the one integration mlyard's runs use; the webhooks of the others, pods
  and Deployments among them, are left out, as a cluster without those integrations would have them).
- Its certificates are the Secret its cert rotator fills, in files where Kueue reads them, as kubelet
  keeps a Secret volume: `_mount_secret` copies the Secret's keys there while Kueue runs.
- It runs as a process here with the cluster's admin credentials (its release's ClusterRole grants it
  about that much; the tests check mlyard, not Kueue's RBAC), with leader election off and no
  visibility API server (an aggregated API no test here reads).

`close` takes its webhooks away with it and ends every Kueue object it kept a finalizer on, so the
control plane's other tests never call a Kueue that has stopped."""

from __future__ import annotations

import base64
import copy
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from controlplane import BIN, ControlPlane, free_port, install_crd
from pod_network import _ADDRESSES

QUEUES = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "components" / "kueue" / "queues.yaml"
MANIFESTS = BIN / "kueue-manifests"
NS = "kueue-system"
SERVICE = "kueue-webhook-service"
GROUP = "kueue.x-k8s.io"
KINDS = ("workloads", "localqueues", "clusterqueues", "resourceflavors", "cohorts")  # what Kueue holds finalizers on
WEBHOOK_GROUPS = {GROUP, "batch"}


def missing() -> str | None:
    if not os.access(BIN / "kueue", os.X_OK) or not (MANIFESTS / "webhooks.yaml").exists():
        return f"no Kueue in {BIN}: `make test` builds it (tests/controlplane/build.sh)"
    return None


@dataclass
class Kueue:
    proc: subprocess.Popen
    home: Path
    ip: str
    api: object  # kubelet_node.ClusterApi, as the cluster's admin
    stop: threading.Event = field(default_factory=threading.Event)

    def log(self) -> str:
        return (self.home / "kueue.log").read_text(errors="replace")

    def close(self) -> None:
        """Stop Kueue, take its webhooks away, and end what it held (its finalizers) so that namespaces go."""
        self.stop.set()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        req = self.api.request  # type: ignore[attr-defined]
        for kind in ("mutating", "validating"):
            req("DELETE", f"/apis/admissionregistration.k8s.io/v1/{kind}webhookconfigurations/kueue-{kind}-webhook-configuration")
        for plural in KINDS:
            code, listed = req("GET", f"/apis/{GROUP}/v1beta2/{plural}")
            for obj in (listed or {}).get("items") or [] if code == 200 else []:
                meta = obj["metadata"]
                path = f"/apis/{GROUP}/v1beta2" + (f"/namespaces/{meta['namespace']}" if meta.get("namespace") else "")
                path += f"/{plural}/{meta['name']}"
                req("PATCH", path, {"metadata": {"finalizers": None}}, "application/merge-patch+json")
                req("DELETE", path)
        subprocess.run(["ip", "addr", "del", f"{self.ip}/32", "dev", "lo"], capture_output=True)


def _apply(api, path: str, obj: dict) -> None:
    """Server-side apply of `obj` at `path` (its collection's path plus its name), as `kubectl apply --server-side`."""
    code, doc = api.request("PATCH", f"{path}/{obj['metadata']['name']}?fieldManager=mlyard-tests&force=true", obj,
                            "application/apply-patch+yaml")
    assert code in (200, 201), f"applying {obj['kind']} {obj['metadata']['name']}: {code} {(doc or {}).get('message')}"


def _service(obj: dict) -> None:
    """A manifest's reference to `system/webhook-service` as the release's kustomization makes it."""
    obj.update(namespace=NS, name=SERVICE)


def _install(api, port: int, ip: str) -> None:
    """Kueue's namespace, its webhook's Service and endpoint, its CRDs (with the conversion webhooks its
    release turns on) and its webhook configurations, for the webhooks of Kueue's own kinds and Jobs."""
    _apply(api, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    base = f"/api/v1/namespaces/{NS}"
    _apply(api, f"{base}/secrets", {"apiVersion": "v1", "kind": "Secret",  # Kueue's cert rotator fills it
                                    "metadata": {"name": "kueue-webhook-server-cert", "namespace": NS}})
    _apply(api, f"{base}/services", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NS},
                                     "spec": {"ports": [{"port": 443, "targetPort": port}]}})
    _apply(api, f"{base}/endpoints", {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": SERVICE, "namespace": NS},
                                      "subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": port}]}]})
    conversions = {}
    for patch in (MANIFESTS / "patches").glob("*.yaml"):
        doc = yaml.safe_load(patch.read_text())
        _service(doc["spec"]["conversion"]["webhook"]["clientConfig"]["service"])
        conversions[doc["metadata"]["name"]] = doc["spec"]["conversion"]
    for crd_file in sorted((MANIFESTS / "crd").glob("*.yaml")):
        crd = yaml.safe_load(crd_file.read_text())
        if crd["metadata"]["name"] in conversions:
            crd["spec"]["conversion"] = conversions[crd["metadata"]["name"]]
        install_crd(api, crd)
    for doc in yaml.safe_load_all((MANIFESTS / "webhooks.yaml").read_text()):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
        doc["webhooks"] = [w for w in doc["webhooks"]
                           if all(g in WEBHOOK_GROUPS for rule in w["rules"] for g in rule["apiGroups"])]
        for hook in doc["webhooks"]:
            _service(hook["clientConfig"]["service"])
        plural = doc["kind"].lower() + "s"
        _apply(api, f"/apis/admissionregistration.k8s.io/v1/{plural}", doc)


def _mount_secret(kueue: Kueue, folder: Path) -> None:
    """The webhook's Secret as files in `folder`, kept up to date as kubelet keeps a Secret volume (written
    to a new file, then renamed over the old one)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    path = f"/api/v1/namespaces/{NS}/secrets/kueue-webhook-server-cert"
    while not kueue.stop.wait(0.3):
        code, secret = kueue.api.request("GET", path)  # type: ignore[attr-defined]
        for key, value in ((secret or {}).get("data") or {}).items() if code == 200 else ():
            data, target = base64.b64decode(value), folder / key
            if not target.exists() or target.read_bytes() != data:
                (folder / f".{key}").write_bytes(data)
                (folder / f".{key}").replace(target)


def start(plane: ControlPlane, home: Path, api, timeout: float = 90) -> Kueue:
    """Kueue installed on `plane` and running, its webhooks answering the API server. `api`: a
    kubelet_node.ClusterApi as the cluster's admin."""
    home.mkdir(parents=True, exist_ok=True)
    ip, port, probes = next(_ADDRESSES), free_port(), free_port()
    subprocess.run(["ip", "addr", "replace", f"{ip}/32", "dev", "lo"], check=True, capture_output=True)
    _install(api, port, ip)
    config = home / "kueue-config.yaml"
    config.write_text(yaml.safe_dump({
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": NS,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probes}"}, "metrics": {"bindAddress": "0"},
        "webhook": {"host": ip, "port": port, "certDir": str(home / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": SERVICE,
                                   "webhookSecretName": "kueue-webhook-server-cert"},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False}}))
    log = open(home / "kueue.log", "ab")  # noqa: SIM115 - the process keeps it
    proc = subprocess.Popen([str(BIN / "kueue"), f"--config={config}", f"--kubeconfig={plane.kubeconfig()}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home,
                            start_new_session=True)
    log.close()
    kueue = Kueue(proc, home, ip, api)
    threading.Thread(target=_mount_secret, args=(kueue, home / "certs"), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while True:  # ready: its certificates made and injected, its webhook server and controllers started
            assert proc.poll() is None, f"Kueue exited ({proc.returncode}):\n{kueue.log()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{probes}/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"Kueue not ready within {timeout:.0f} s:\n{kueue.log()[-3000:]}"
            time.sleep(0.3)
        while True:  # and the API server reaches its webhooks (a dry run through the ResourceFlavor webhook)
            code, doc = api.request("POST", f"/apis/{GROUP}/v1beta2/resourceflavors?dryRun=All", {
                "apiVersion": f"{GROUP}/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "probe"}})
            if code == 201:
                break
            assert time.monotonic() < deadline, f"Kueue's webhooks not reached: {code} {(doc or {}).get('message')}"
            time.sleep(0.3)
    except BaseException:
        kueue.close()
        raise
    return kueue


def path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    """The REST path of Kueue's `plural` (v1beta2), in `namespace` for the namespaced ones."""
    return f"/apis/{GROUP}/v1beta2" + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}" + (
        f"/{name}" if name else "")


def apply(api, obj: dict) -> None:
    """Server-side apply of one of Kueue's objects (its webhooks validate it)."""
    meta = obj["metadata"]
    _apply(api, path(obj["kind"].lower() + "s", meta.get("namespace")), obj)


def workloads(api, namespace: str) -> list[dict]:
    code, doc = api.request("GET", path("workloads", namespace))
    assert code == 200, doc
    return doc["items"]


def condition(workload: dict, kind: str) -> dict | None:
    return next((c for c in (workload.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def holds_quota(workload: dict) -> bool:
    """Admitted and not finished: what counts against its ClusterQueue's quota."""
    reserved, done = condition(workload, "QuotaReserved"), condition(workload, "Finished")
    return bool(reserved and reserved["status"] == "True" and not (done and done["status"] == "True"))


def install_queues(api, gpus: int, hold: bool = False, namespace: str = "mlyard") -> None:
    """The install's ResourceFlavor, ClusterQueue (its GPU quota `gpus`; admitting nothing while `hold`) and
    LocalQueue (in the platform's `namespace`)."""
    for obj in yaml.safe_load_all(QUEUES.read_text()):
        obj = copy.deepcopy(obj)
        if obj["kind"] == "ClusterQueue":
            for r in obj["spec"]["resourceGroups"][0]["flavors"][0]["resources"]:
                if r["name"] == "nvidia.com/gpu":
                    r["nominalQuota"] = str(gpus)
            obj["spec"]["stopPolicy"] = "Hold" if hold else "None"
        if obj["kind"] == "LocalQueue":
            obj["metadata"]["namespace"] = namespace
        apply(api, obj)
