"""A notebook on Kubernetes: a StatefulSet of one pod (JupyterLab through the same boot as on one machine,
tasks/notebook_boot.py) whose data storage is the PersistentVolumeClaim of its claim template, boot
storage an emptyDir of the boot size, its token a Secret, a Service and a NetworkPolicy admitting only
mlyard's front door (the mlyard API's pods: mlyard/door_pages.py), which signs its user in. A NAS share
is the platform team's PersistentVolumeClaim `nas-{id}` (mounted at its path, never created or deleted
here).

    stop    the StatefulSet scaled to 0 (the claim stays: whenScaled Retain)
    start   scaled to 1 again (a new pod: boot storage anew, the start-up scripts run)
    reboot  its pod deleted (the StatefulSet makes it again)
    delete  every object, the data storage's claim included

Rendered from infra/notebook/ and checked against the Kubernetes schema before anything is applied
(server-side apply, field manager `mlyard`, as endpoint stages are: tasks/kubernetes.py).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from mlyard.core.assets import infra
from mlyard.core.environment import member_egress
from mlyard.core.specs.notebook import INSTANCE_TYPES, NotebookSpec
from mlyard.core.uris import parse_uri
from mlyard.tasks.kubernetes import FIELD_MANAGER, LABEL, apply_object, read_object, validate
from mlyard.tasks.notebooks import HEALTH_PATH, base_path

TEMPLATES = infra("notebook")
PORT = 8888
FOLDER = "/mlyard/notebook"  # boot/ and data/ under it, as <home>/notebooks/<id>/ on one machine
TOKEN_DIR = "/var/run/secrets/mlyard-notebook"


def object_name(notebook_id: int) -> str:
    """The name of the notebook's objects: by id, so a renamed notebook keeps them (its name is a label)."""
    return f"notebook-{notebook_id}"


PLATFORM_PORTS = {"mlyard-api": 8080, "gateway": 8080, "mlflow": 5000}  # what a notebook's kernel reaches of the platform


def render(name: str, notebook_id: int, spec: NotebookSpec, image: str, token: str, *, namespace: str = "mlyard",
           replicas: int = 1, pull_secrets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The notebook's Secret, Service, NetworkPolicy and StatefulSet (`replicas` 0 when stopped)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, autoescape=False,
                      keep_trailing_newline=True)
    env.filters["tojson"] = lambda value: json.dumps(value)
    kind = INSTANCE_TYPES[spec.instance_type]
    obj = object_name(notebook_id)
    labels = {"app.kubernetes.io/name": "mlyard-notebook", "app.kubernetes.io/managed-by": "mlyard",
              f"{LABEL}/notebook": str(notebook_id), f"{LABEL}/notebook-name": name}
    selector = {f"{LABEL}/notebook": str(notebook_id)}
    quantities = {"cpu": str(kind.cpus), "memory": f"{kind.memory_gb}Gi"}
    if kind.gpus:
        quantities["nvidia.com/gpu"] = str(kind.gpus)
    command = ["python", "-m", "mlyard.tasks.notebook_boot", "--folder", FOLDER, "--port", str(PORT), "--ip", "0.0.0.0",
               "--token-file", f"{TOKEN_DIR}/token", "--cpus", str(kind.cpus), "--base-url", base_path(notebook_id)]
    mounts = [{"name": "data", "mountPath": f"{FOLDER}/data"}, {"name": "boot", "mountPath": f"{FOLDER}/boot"},
              {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]
    volumes: list[dict[str, Any]] = [
        {"name": "boot", "emptyDir": {"sizeLimit": f"{spec.boot_storage_gb}Gi"}},
        {"name": "token", "secret": {"secretName": f"{obj}-token", "defaultMode": 0o400}}]
    if spec.nas is not None:
        where = parse_uri(spec.nas.uri, "nas.uri")
        mounts.append({"name": "nas", "mountPath": f"/mlyard/nas/{spec.nas.mount_name}",
                       "subPath": str(where.path).lstrip("/")})
        volumes.append({"name": "nas", "persistentVolumeClaim": {"claimName": f"nas-{where.nas_id}"}})
        command += ["--nas", f"{spec.nas.mount_name}=/mlyard/nas/{spec.nas.mount_name}"]
    context = {
        "name": obj, "namespace": namespace, "labels": labels, "selector": selector, "replicas": replicas,
        "image": image, "command": command, "port": PORT, "health": base_path(notebook_id) + HEALTH_PATH, "requests": quantities, "limits": quantities,
        "env": [{"name": "MLYARD_NOTEBOOK", "value": name}, {"name": "MLYARD_INSTANCE_TYPE", "value": kind.name}],
        "mounts": mounts, "volumes": volumes, "data_storage": f"{spec.data_storage_gb}Gi",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if kind.gpus else [],
        "pull_secrets": [{"name": n} for n in pull_secrets],
        # a member's kernel: DNS, the internet, the storage, and the platform's API, gateway and MLflow
        "egress": [*member_egress(), *({"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": part}}}],
                                        "ports": [{"port": port, "protocol": "TCP"}]} for part, port in PLATFORM_PORTS.items())],
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": f"{obj}-token", "namespace": namespace, "labels": labels},
              "stringData": {"token": token}}
    return [secret, *(yaml.safe_load(env.get_template(f"{t}.yaml.j2").render(context))
                      for t in ("service", "networkpolicy", "statefulset"))]


def apply(api_client: Any, manifests: list[dict[str, Any]], namespace: str) -> dict[str, list[str]]:
    """Server-side apply of the notebook's objects; what was created, changed or left unchanged."""
    from mlyard.tasks.cluster import discovery_client

    validate(manifests)
    dyn = discovery_client(api_client)
    done: dict[str, list[str]] = {"created": [], "changed": [], "unchanged": []}
    for m in manifests:
        resource = dyn.resources.get(api_version=m["apiVersion"], kind=m["kind"])
        live = read_object(dyn, resource, m["metadata"]["name"], namespace)
        after = apply_object(dyn, resource, m, namespace, FIELD_MANAGER)
        outcome = ("created" if live is None else "unchanged"
                   if after["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"] else "changed")
        done[outcome].append(f"{m['kind']}/{m['metadata']['name']}")
    return done


def reboot(api_client: Any, name: str, notebook_id: int, namespace: str) -> None:
    """Delete the notebook's pod: its StatefulSet starts a new one on the same data storage. No pod (a stopped
    notebook's, or one its controller is making again) is nothing to reboot."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    try:
        kubernetes.client.CoreV1Api(api_client).delete_namespaced_pod(f"{object_name(notebook_id)}-0", namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


def delete(api_client: Any, name: str, notebook_id: int, namespace: str) -> list[str]:
    """Delete every object of the notebook and its data storage's claim (a NAS claim is never its own)."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    obj = object_name(notebook_id)
    apps, core = kubernetes.client.AppsV1Api(api_client), kubernetes.client.CoreV1Api(api_client)
    net = kubernetes.client.NetworkingV1Api(api_client)
    gone = []
    for kind, call, target in (("StatefulSet", apps.delete_namespaced_stateful_set, obj),
                               ("Service", core.delete_namespaced_service, obj),
                               ("NetworkPolicy", net.delete_namespaced_network_policy, obj),
                               ("Secret", core.delete_namespaced_secret, f"{obj}-token"),
                               ("PersistentVolumeClaim", core.delete_namespaced_persistent_volume_claim,
                                f"data-{obj}-0")):
        try:
            call(target, namespace)
            gone.append(f"{kind}/{target}")
        except ApiException as exc:
            if exc.status != 404:
                raise
    return gone

