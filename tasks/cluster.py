"""The platform on a Kubernetes cluster: `infra/k8s` rendered for a values file, and the cluster's clients.

`render` runs `kubectl kustomize` on the values' overlay (kustomize is the tool made for it) and then
sets what the values name: the namespace, the image and its pull Secrets, the Secrets' names, the
gateway's replicas, the Kueue queue, the runs' network reach. `with_api_server` reads the cluster API's
addresses for the last. tasks/cluster_apply.py applies it; `secret_problems` says what the
namespace lacks first, `check_gpus` what the GPU nodes cannot give.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mlyard.core.assets import infra
from mlyard.core.errors import SpecError, StackError
from mlyard.core.specs.cluster import ClusterValues

K8S = infra("k8s")
BASE_IMAGE = "mlyard:0.1.0"  # what the base's `images:` renders; replaced by the values' image
# the engines' images as infra/k8s names them -> the values' field (images.*) that replaces each
ENGINES = {"prefecthq/prefect:3.8.8-python3.11": "prefect", "quay.io/oauth2-proxy/oauth2-proxy:v7.8.1": "oauth2_proxy",
           "pgvector/pgvector:0.8.0-pg16": "postgres"}
DEFAULT_SECRETS = {"mlyard-prefect": "prefect", "mlyard-mlflow": "mlflow", "mlyard-settings": "settings",
                   "mlyard-postgres": "postgres"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
MIGRATION_JOB = "mlyard-migrate"
RUN_POLICIES = ("runs", "runs-cluster-api", "training-nodes")  # their egress is the values' network's
FIRST = ("Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap")  # what others refer to


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize PATH` renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise StackError("kubectl is not on PATH: rendering infra/k8s needs kubectl 1.27 or newer (kustomize v5)")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise StackError(f"kubectl kustomize {path} failed: {out.stderr.strip().splitlines()[-1:]}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def with_components(overlay: str, namespace: str, components: list[str]) -> list[dict[str, Any]]:
    """The objects of `overlay` with opt-in components (infra/k8s/components), as an overlay of the user's
    that names them renders."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlyard-kustomize-") as tmp:
        rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731 - kustomize takes relative paths alone
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
            "resources": [rel(K8S / "overlays" / overlay)], "components": [rel(K8S / "components" / c) for c in components]}))
        return kustomize(Path(tmp))


def render(values: ClusterValues) -> list[dict[str, Any]]:
    """Every object of the install, in the order to apply them."""
    from mlyard.tasks import cluster_connections, cluster_monitoring, cluster_release

    components = [c for c, on in (("sign-in", values.sign_in), ("monitoring", values.monitoring.enabled)) if on]
    objs = with_components(values.overlay, values.namespace, components) if components else kustomize(
        K8S / "overlays" / values.overlay)
    secret_names = {default: getattr(values.secrets, field) for default, field in DEFAULT_SECRETS.items()}
    out = cluster_monitoring.customize([_customize(obj, values, secret_names) for obj in objs], values)
    cluster_connections.check(cluster_connections.customize(out, values), values)
    out += cluster_release.jobs(values, next(o for o in out if o["kind"] == "Job" and o["metadata"]["name"] == MIGRATION_JOB))
    if values.kueue_queue:  # the opt-in component's queues (Kueue must be installed), the queue in the ConfigMap
        queues = [d for d in yaml.safe_load_all((K8S / "components" / "kueue" / "queues.yaml").read_text()) if d]
        gpu = values.gpu  # the pool's quota: its nodes' GPUs, CPUs and memory (as quantities: _quantity)
        quota = {"nvidia.com/gpu": _quantity(gpu.nodes * gpu.per_node), "cpu": _quantity(gpu.nodes * gpu.cpus_per_node),
                 "memory": f"{gpu.nodes * gpu.memory_gib_per_node}Gi"}
        for q in queues:
            if q["kind"] == "LocalQueue":
                q["metadata"].update(name=values.kueue_queue, namespace=values.namespace)
            if q["kind"] == "ClusterQueue":
                for r in q["spec"]["resourceGroups"][0]["flavors"][0]["resources"]:
                    r["nominalQuota"] = quota[r["name"]]
        out += queues
        for obj in out:
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "mlyard-config":
                obj["data"]["MLYARD_KUEUE_QUEUE"] = values.kueue_queue
    return sorted(out, key=lambda o: (o["kind"] not in FIRST, FIRST.index(o["kind"]) if o["kind"] in FIRST else 0))


COHORT = "mlyard"  # the gpu pool's ClusterQueue and every project's: idle quota is borrowed within it


def project_queues(values: ClusterValues, projects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each project's Kueue queues beside the gpu pool's (values.kueue_queue): a ClusterQueue
    `mlyard-<project>` whose nominal quota is the project's GPUs and CPUs (0 when it has none: it borrows
    idle quota only), in the cohort of the pool's ClusterQueue, and the LocalQueue its runs' Jobs are
    labelled with (core/access.py project_queue; tasks/orchestration.py sets it, never a caller)."""
    from mlyard.core.access import DEFAULT_PROJECT, project_queue

    if not values.kueue_queue:
        raise SpecError("kueue_queue", None, "the gpu pool's LocalQueue (Kueue installed): each project's queue "
                        "is made beside it")
    out: list[dict[str, Any]] = []
    for p in projects:
        if p["name"] == DEFAULT_PROJECT:  # its runs use the pool's own queue
            continue
        quota = [{"name": "cpu", "nominalQuota": _quantity(p.get("cpus") or 0)}, {"name": "memory", "nominalQuota": "0"},
                 {"name": "nvidia.com/gpu", "nominalQuota": _quantity(p.get("gpus") or 0)}]
        cq = f"mlyard-{p['name']}"
        out.append({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
                    "metadata": {"name": cq, "labels": {"mlyard.project": p["name"]}},
                    "spec": {"cohortName": COHORT, "namespaceSelector": {}, "resourceGroups": [
                        {"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                         "flavors": [{"name": "gpu", "resources": quota}]}]}})
        out.append({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                    "metadata": {"name": project_queue(values.kueue_queue, p["name"]), "namespace": values.namespace,
                                 "labels": {"mlyard.project": p["name"]}},
                    "spec": {"clusterQueue": cq}})
    return out


def _quantity(number: float) -> str:
    """A count as Kubernetes keeps a quantity (2 -> "2", 1.5 -> "1500m"): Kueue writes its objects back in
    this form, and anything else applied again would change them at every apply."""
    return str(int(number)) if float(number).is_integer() else f"{round(number * 1000)}m"


def _customize(obj: dict, values: ClusterValues, secret_names: dict[str, str | None]) -> dict:
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    if obj["kind"] == "Namespace":
        meta["name"] = values.namespace
    elif "namespace" in meta:
        meta["namespace"] = values.namespace
    for subject in obj.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject["namespace"] = values.namespace
    if obj["kind"] == "ConfigMap" and meta["name"] == "mlyard-config":
        obj["data"].update(MLYARD_KUBE_NAMESPACE=values.namespace, MLYARD_IMAGE=values.image,
                           MLYARD_SERVING_IMAGE=values.images.serving,  # what the platform's flows put in pods
                           MLYARD_RUNTIME_IMAGES=json.dumps(values.runtime_images, sort_keys=True),
                           MLYARD_NOTEBOOK_IMAGE=values.images.notebook,  # a notebook that names no image
                           MLYARD_IMAGE_PULL_SECRETS=",".join(values.image_pull_secrets),
                           MLYARD_PROJECTS_URI=values.projects_uri,  # a member's model's and kernel's reach:
                           MLYARD_NETWORK=values.network.model_dump_json(),  # stages, notebooks
                           MLYARD_SETTINGS_SECRET=values.secrets.settings)  # what the pods flows make read
    if obj["kind"] == "NetworkPolicy" and meta["name"] in RUN_POLICIES:  # a member's script runs in these pods
        net = values.network
        rules = {"runs": net.run_egress, "runs-cluster-api": net.api_egress, "training-nodes": net.run_egress}
        obj["spec"]["egress"] = obj["spec"].get("egress", []) + rules[meta["name"]]()
    if obj["kind"] == "StatefulSet" and values.storage_class:
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            claim["spec"]["storageClassName"] = values.storage_class
    if obj["kind"] == "Deployment" and meta["name"] == "gateway":
        obj["spec"]["replicas"] = values.gateway_replicas
    if obj["kind"] in WORKLOADS:
        pod = obj["spec"]["template"]["spec"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:  # mlyard's and the engines' images, the values'
            c["image"] = values.image if c["image"] == BASE_IMAGE else getattr(values.images, ENGINES.get(c["image"], "-"),
                                                                               c["image"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] in secret_names:
                    ref["name"] = secret_names[ref["name"]]
                if e["name"] == "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES":
                    e["value"] = values.namespace
                if e["name"].endswith("_SECRET_NAME") and e.get("value") in secret_names:
                    e["value"] = secret_names[e["value"]]
        for v in pod.get("volumes", []):
            if "secret" in v and v["secret"]["secretName"] in secret_names:
                v["secret"]["secretName"] = secret_names[v["secret"]["secretName"]]
        if values.image_pull_secrets:  # every pod's: a mirrored registry holds the engines' images too
            pod["imagePullSecrets"] = [{"name": n} for n in values.image_pull_secrets]
    return obj


def secret_names(objs: list[dict]) -> set[str]:
    """The Secrets the rendered objects refer to (they must exist before the pods start)."""
    names: set[str] = set()
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        pod = obj["spec"]["template"]["spec"]
        for c in pod["containers"]:
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                      if e.get("valueFrom", {}).get("secretKeyRef")}
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        names |= {s["name"] for s in pod.get("imagePullSecrets", [])}
    return names


def dynamic_client(kubeconfig: str | None = None, context: str | None = None):
    """A DynamicClient for the cluster of a kubeconfig (default: ~/.kube/config, then in-cluster)."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError, TypeError) as exc:
        if kubeconfig:
            raise StackError(f"kubeconfig {kubeconfig}: {exc}") from None
        try:
            config.load_incluster_config()
        except ConfigException:
            raise StackError(f"no cluster: {exc} (name one with --kubeconfig or KUBECONFIG)") from None
        from kubernetes import client

        api_client = client.ApiClient()
    return discovery_client(api_client)


def with_api_server(values: ClusterValues, dyn: Any) -> tuple[ClusterValues, str | None]:
    """The values with the cluster API server's addresses and ports (the `kubernetes` Service of `default` and its
    EndpointSlices) when they name none, and a line saying what was read; as they were otherwise."""
    if values.network.api_server_cidrs:
        return values, None
    import ipaddress

    from kubernetes.client.exceptions import ApiException

    try:
        service = dyn.resources.get(api_version="v1", kind="Service").get(name="kubernetes", namespace="default")
        slices = dyn.resources.get(api_version="discovery.k8s.io/v1", kind="EndpointSlice").get(
            namespace="default", label_selector="kubernetes.io/service-name=kubernetes")
    except ApiException as exc:
        raise StackError(f"could not read the cluster API's addresses (Service default/kubernetes): {exc.reason}; "
                         "name them in the values' network.api_server_cidrs") from None
    spec = service.to_dict()["spec"]
    addresses = [*(spec.get("clusterIPs") or [spec.get("clusterIP")])]
    ports = [p["port"] for p in spec.get("ports") or []]
    for item in slices.to_dict().get("items") or []:
        addresses += [a for e in item.get("endpoints") or [] for a in e.get("addresses") or []]
        ports += [p["port"] for p in item.get("ports") or [] if p.get("port")]
    cidrs = sorted({str(ipaddress.ip_network(a)) for a in addresses if a and a != "None"})
    if not cidrs:
        raise StackError("the cluster's Service default/kubernetes names no address: name the API server's in the "
                         "values' network.api_server_cidrs")
    ports = sorted(set(ports)) or values.network.api_server_ports
    network = values.network.model_copy(update={"api_server_cidrs": cidrs, "api_server_ports": ports})
    return (values.model_copy(update={"network": network}),
            f"the cluster API: {', '.join(cidrs)} on ports {', '.join(map(str, ports))} (kept from "
            "every pod that runs a member's code; network.api_server_cidrs)")


def discovery_client(api_client: Any):
    """A DynamicClient over `api_client`, its discovery cache in mlyard's cache folder (made private)
    rather than the kubernetes client's default: a world-readable `osrcp-*.json` in /tmp per API server,
    never removed."""
    import hashlib

    from kubernetes import dynamic

    from mlyard.tasks.cache import cache_dir

    folder = cache_dir() / "kubernetes"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:  # a read-only home in a pod: the client's own default rather than no client
        return dynamic.DynamicClient(api_client)
    key = hashlib.sha256(api_client.configuration.host.encode()).hexdigest()[:16]
    return dynamic.DynamicClient(api_client, cache_file=str(folder / f"discovery-{key}.json"))


# Keys of the settings Secret read as files (not as secretKeyRef), without which pods refuse to start:
# the gateway (the internal credential) and every stage's pods (the replicas' credential).
REQUIRED_SETTINGS_KEYS = ("mlyard_internal_token", "mlyard_replica_token")


def secret_problems(objs: list[dict], dyn, namespace: str, settings_secret: str) -> list[str]:
    """What the namespace lacks of the Secrets the objects name: a Secret that is not there, or a key a
    container needs (a secretKeyRef that is not optional, or one of the settings Secret's required keys).
    A pod would otherwise sit in CreateContainerConfigError, or start and refuse, after the apply."""
    from kubernetes.dynamic.exceptions import NotFoundError

    needs: dict[str, set[str]] = {name: set() for name in secret_names(objs)}
    for obj in objs:
        if obj["kind"] in WORKLOADS:
            for c in obj["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref and not ref.get("optional"):
                        needs[ref["name"]].add(ref["key"])
    if settings_secret in needs:
        needs[settings_secret] |= set(REQUIRED_SETTINGS_KEYS)
    secrets = dyn.resources.get(api_version="v1", kind="Secret")
    problems = []
    for name in sorted(needs):
        try:
            secret = dyn.get(secrets, name=name, namespace=namespace).to_dict()
        except NotFoundError:
            problems.append(f"Secret {name} (missing)")
            continue
        lacking = sorted(needs[name] - set(secret.get("data") or {}))
        if lacking:
            problems.append(f"Secret {name} without key(s) {', '.join(lacking)}")
    return problems


GPU = "nvidia.com/gpu"
GPU_PRODUCT = "nvidia.com/gpu.product"  # the label the NVIDIA GPU feature discovery puts on GPU nodes


def gpu_capacity(dyn) -> dict[str, int]:
    """The most GPUs one node of each GPU type offers (allocatable `nvidia.com/gpu`), from the API's nodes."""
    nodes = dyn.resources.get(api_version="v1", kind="Node")
    capacity: dict[str, int] = {}
    for node in dyn.get(nodes).to_dict().get("items", []):
        gpus = int((node.get("status", {}).get("allocatable") or {}).get(GPU, 0) or 0)
        if gpus:
            kind = (node["metadata"].get("labels") or {}).get(GPU_PRODUCT, "")
            capacity[kind] = max(capacity.get(kind, 0), gpus)
    return capacity


def check_gpus(field: str, gpu_count: int, gpu_type: str | None, capacity: dict[str, int]) -> None:
    """Refuse a GPU request no node of the cluster can hold (SpecError naming the field)."""
    if gpu_count == 0:
        return
    if not capacity:
        raise SpecError(f"{field}.gpu_count", gpu_count, "0: the cluster reports no node with GPUs")
    types = sorted(t for t in capacity if t)
    if gpu_type and gpu_type not in capacity:
        raise SpecError(f"{field}.gpu_type", gpu_type, "one of the cluster's GPU types: " + ", ".join(types))
    most = capacity[gpu_type] if gpu_type else max(capacity.values())
    if gpu_count > most:
        where = f"a {gpu_type} node" if gpu_type else "a node"
        raise SpecError(f"{field}.gpu_count", gpu_count, f"at most {most} (the GPUs of {where}); "
                        "a training that needs more GPUs needs more nodes")


def to_yaml(objs: list[dict]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)
