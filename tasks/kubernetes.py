"""An endpoint stage on Kubernetes, as manifests: each stage resource is a Deployment (the mlyard model
server on the resource's model version; its replicas spread over nodes, each let go of before it stops), a
Service, a NetworkPolicy admitting only the gateway's pods, a PodDisruptionBudget (a drain takes one replica
at a time) and, when its pod autoscaler is on, a HorizontalPodAutoscaler whose target is the resource's CPU
or memory threshold. The stage's node autoscaler settings become cluster-autoscaler annotations for its
node pool.

The manifests come from the templates in `infra/endpoint/` and are checked against the Kubernetes
schema (kubernetes-validate) before anything is applied. Plain functions of the catalog's endpoint
view (registry/endpoints.py): no cluster is needed to render or validate. `apply_stage` and
`delete_stage` talk to the cluster through the `kubernetes` client's typed APIs.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import yaml

from mlyard.core.assets import infra
from mlyard.core.environment import kubeconfig_path, member_egress, runtime_images
from mlyard.core.errors import SpecError
from mlyard.core.names import param_environ
from mlyard.core.settings import DEFAULT_IMAGE as SETTINGS_DEFAULT_IMAGE
from mlyard.core.settings import Settings
from mlyard.core.specs.endpoint import body_limit_args
from mlyard.tasks.replicas import CODE_KIND, health_path

TEMPLATES = infra("endpoint")
KUBERNETES_VERSION = "1.30"
PORT = 8080
DEFAULT_IMAGE = SETTINGS_DEFAULT_IMAGE
LABEL = "mlyard.io"


# What a stage's pods read of the settings Secret: the model's registry (catalog) and artifacts (S3). Never
# the internal credential: a replica runs a model's own code (its replica credential comes as
# MLYARD_REPLICA_TOKEN from `mlyard_replica_token`).
REPLICA_SETTINGS = ("mlyard_catalog_url", "mlyard_s3_endpoint_url", "mlyard_s3_access_key_id",
                    "mlyard_s3_secret_access_key")


def resource_name(endpoint: str, stage: str, resource_id: int) -> str:
    """A DNS-1123 name for a stage resource's objects (at most 63 characters)."""
    base = re.sub(r"[^a-z0-9-]", "-", f"{endpoint}-{stage}".lower()).strip("-")
    suffix = f"-r{resource_id}"
    return base[:63 - len(suffix)].rstrip("-") + suffix


def render_stage(view: dict[str, Any], stage: str, *, image: str = DEFAULT_IMAGE, namespace: str = "mlyard",
                 parameters: dict[str, dict[str, str]] | None = None, pull_secrets: tuple[str, ...] = (),
                 settings_secret: str = "mlyard-settings") -> list[dict[str, Any]]:
    """The manifests of one stage of an endpoint view (`Endpoints.get`); `parameters` maps a resource's
    model ("name/version") to its version parameters (arguments and environment of the server);
    `pull_secrets` name the image's pull Secrets, `settings_secret` the Secret of MLYARD_* settings."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, autoescape=False,
                      keep_trailing_newline=True)
    env.filters["tojson"] = lambda value: json.dumps(value)  # YAML flow style: JSON is valid YAML
    st = next((s for s in view["stages"] if s["name"] == stage), None)
    if st is None:
        raise SpecError("stage", stage, f"a stage of endpoint {view['name']!r}")
    out: list[dict[str, Any]] = []
    for res in st["resources"]:
        name = resource_name(view["name"], stage, res["id"])
        model_name, version = res["model"].rsplit("/", 1)
        params = (parameters or {}).get(res["model"], {})
        labels = {"app.kubernetes.io/name": "mlyard-model-server", "app.kubernetes.io/managed-by": "mlyard",
                  f"{LABEL}/endpoint": view["name"], f"{LABEL}/stage": stage, f"{LABEL}/resource": str(res["id"])}
        selector = {k: labels[k] for k in (f"{LABEL}/endpoint", f"{LABEL}/stage", f"{LABEL}/resource")}
        quantities = {"cpu": _cpu(res["cpu"]), "memory": res["memory"]}
        if res["gpu"]:
            quantities["nvidia.com/gpu"] = str(res["gpu"])
        context = {
            "name": name, "namespace": namespace, "labels": labels, "selector": selector, "resource": res,
            "image": image, "port": PORT,
            "args": ["mlyard", "serve", f"models:/{model_name}/{version}", "--host", "0.0.0.0", "--port", str(PORT),
                     "--name", model_name, "--inference-log", "-",  # a record per request in the pod's log
                     *[a for k, v in params.items() for a in ("--param", f"{k}={v}")],
                     *body_limit_args(view.get("max_request_bytes"), Settings().max_request_bytes)],
            "env": [{"name": k, "value": v} for k, v in {
                **param_environ(params), "MLYARD_ENDPOINT_ID": view["name"], "MLYARD_ENDPOINT_STAGE_ID": stage}.items()]
            # the replicas' credential: the pod answers only requests that carry it (the gateway's), health
            # checks aside; required (no key, no pod), so that no replica serves unguarded
            + [{"name": "MLYARD_REPLICA_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": settings_secret, "key": "mlyard_replica_token"}}}],
            "command": None, "init_containers": [], "extra_volumes": [],
            "mounts": [{"name": "settings", "mountPath": "/var/run/secrets/mlyard", "readOnly": True}],
            "probes": {"readinessProbe": {"httpGet": {"path": health_path(params.get(CODE_KIND)), "port": "http"},
                                          "periodSeconds": 5},
                       "livenessProbe": {"httpGet": {"path": health_path(params.get(CODE_KIND)).replace(
                           "/v2/health/ready", "/v2/health/live"), "port": "http"},
                           "initialDelaySeconds": 30, "periodSeconds": 10}},
            "requests": quantities, "limits": quantities,
            "node_selector": {"node.kubernetes.io/instance-type": st["instance_type"]}
            if st["instance_type"] != "local" else {},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if res["gpu"] else [],
            "pull_secrets": [{"name": n} for n in pull_secrets],
            "settings_secret": settings_secret,
            "settings_items": [{"key": k, "path": k} for k in REPLICA_SETTINGS],
            # a member's model: DNS, the internet, the storage, and the registry its fetch reads; no more of the cluster
            "egress": member_egress(stage=True),
        }
        if (res.get("runtime") or {}).get("variant", "custom") != "custom":
            engine_pod(context, res["runtime"], f"models:/{model_name}/{version}", image)
        else:
            model_pod(context, res["model"], params, image)
        out.append(yaml.safe_load(env.get_template("deployment.yaml.j2").render(context)))
        out.append(yaml.safe_load(env.get_template("service.yaml.j2").render(context)))
        out.append(yaml.safe_load(env.get_template("networkpolicy.yaml.j2").render(context)))
        out.append(yaml.safe_load(env.get_template("pdb.yaml.j2").render(context)))
        if res["pod_autoscaler"].get("enabled"):
            out.append(yaml.safe_load(env.get_template("hpa.yaml.j2").render(context)))
    return out


def engine_pod(context: dict[str, Any], runtime: dict[str, Any], model_uri: str, mlyard_image: str) -> None:
    """A runtime variant's pod (serving/variants.py), in place of mlyard's server: the variant's image (the
    stage's, else the values' MLYARD_RUNTIME_IMAGES, else the variant's default) runs its start command
    on its port, the model folder copied to /models first by an init container of mlyard's image (with the
    replicas' settings alone); a startup probe waits out the variant's initial delay, then readiness
    follows its health path. Pod Security restricted holds: the engine runs as the pod's non-root user,
    with HOME and caches on a writable /tmp."""
    import math

    from mlyard.core.runtimes import MOUNT, VARIANTS

    v = VARIANTS[runtime["variant"]]
    context["image"] = runtime.get("image") or runtime_images().get(v.name) or v.image
    if not context["image"]:
        raise SpecError("runtime.image", None, f"an image: the {v.name} variant runs its image's own command")
    filled = {"model": MOUNT, "port": str(v.port), "host": "0.0.0.0"}
    command = list(v.cluster_command) or [part.format(**filled) for part in v.command]
    context["command"], context["args"] = (command, runtime["args"]) if command else (None, runtime["args"])
    context["port"] = v.port
    context["env"] = [*[{"name": k, "value": str(val)} for k, val in runtime["environ"].items()],
                      {"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/hf"}]
    fetched(context, model_uri, mlyard_image)
    if v.health is None:  # cmd: Backend.AI probes nothing; Kubernetes checks the port opens
        context["probes"] = {"readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10}}
        return
    probe = {"httpGet": {"path": v.health, "port": "http"}, "periodSeconds": int(v.interval)}
    delay = v.initial_delay if v.initial_delay is not None else 60.0
    context["probes"] = {
        "startupProbe": {**probe, "failureThreshold": math.ceil(delay / v.interval) + v.max_retries},
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": v.max_retries}}


def fetched(context: dict[str, Any], model_uri: str, mlyard_image: str) -> None:
    """The version's files copied to /models by an init container of mlyard's image, the one container that
    mounts the settings Secret (the artifacts' keys): the server's container reads /models (read-only) and
    writes /tmp, and holds nothing of the platform's."""
    from mlyard.core.runtimes import MOUNT

    fetch = {"name": "fetch-model", "image": mlyard_image, "args": ["mlyard", "models", "download", model_uri,
                                                                   "--to", MOUNT],
             "envFrom": [{"configMapRef": {"name": "mlyard-config", "optional": True}}],
             "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
             "volumeMounts": [*context["mounts"], {"name": "models", "mountPath": MOUNT}]}
    context["init_containers"] = [fetch]
    context["mounts"] = [{"name": "models", "mountPath": MOUNT, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}]
    context["extra_volumes"] = [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]


def model_pod(context: dict[str, Any], model: str, params: dict[str, str], mlyard_image: str) -> None:
    """mlyard's model server on a version ("name/version"): a model is code, so its container gets the
    version's files from the init container (`fetched`) and, of the platform, the replicas' credential alone
    (no settings Secret, no artifact keys): the server finds the files where MLYARD_MODEL_FILES says, its
    caches under /tmp."""
    from mlyard.core.environment import MODEL_FILES, model_files_value
    from mlyard.core.runtimes import MOUNT

    name, version = model.rsplit("/", 1)
    ref = f"models:/{name}/{version}"
    fetched(context, ref, mlyard_image)
    context["env"] = [*context["env"], {"name": MODEL_FILES, "value": model_files_value(ref, MOUNT, name, version, params)},
                      {"name": "HOME", "value": "/tmp"}, {"name": "MLYARD_CACHE_DIR", "value": "/tmp/cache"}]


def node_pool_annotations(view: dict[str, Any], stage: str) -> dict[str, str]:
    """The stage's node autoscaler as cluster-autoscaler annotations of its node pool (empty when off)."""
    st = next((s for s in view["stages"] if s["name"] == stage), None)
    if st is None:
        raise SpecError("stage", stage, f"a stage of endpoint {view['name']!r}")
    na = st["node_autoscaler"]
    if not na.get("enabled"):
        return {}
    return {
        "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size": str(na["min_nodes"]),
        "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size": str(na["max_nodes"]),
        "cluster-autoscaler.kubernetes.io/scale-down-disabled": "false" if na["scale_down"] else "true",
        "cluster-autoscaler.kubernetes.io/scale-down-utilization-threshold": f"{na['usage_threshold_percent'] / 100:g}",
        "cluster-autoscaler.kubernetes.io/scale-down-unneeded-time": f"{na['threshold_duration_minutes']}m",
        "cluster-autoscaler.kubernetes.io/scale-down-delay-after-add": f"{na['scale_down_delay_minutes']}m",
    }


def validate(manifests: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> None:
    """Check each manifest against the Kubernetes schema of `version`; SpecError naming the first bad one."""
    import kubernetes_validate

    for m in manifests:
        try:
            kubernetes_validate.validate(m, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{m.get('kind')}/{m.get('metadata', {}).get('name')}"
            raise SpecError("manifest", where, f"a valid Kubernetes {version} object ({exc.message})") from None


_KINDS = {  # kind -> (API class, the method names' stem)
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
    "PodDisruptionBudget": ("PolicyV1Api", "pod_disruption_budget"),
}


FIELD_MANAGER = "mlyard"
HANDOVER_MANAGER = "mlyard-replicas-handover"  # holds a Deployment's replica count until its HPA takes it


def apply_stage(api_client: Any, manifests: list[dict[str, Any]], namespace: str, endpoint: str,
                stage: str) -> dict[str, list[str]]:
    """Make the cluster hold exactly these manifests for the stage, with server-side apply under the
    field manager `mlyard`; delete the stage's objects that are no longer wanted (a removed resource, a
    pod autoscaler turned off). A Deployment with an HPA is applied without `replicas`, so the HPA keeps
    what it scaled to: on creation the count goes to the HPA through a hand-over manager, never back to
    1 (server-side apply's transfer of ownership). Returns what was created, changed, left unchanged and
    deleted, as `Kind/name`."""
    from mlyard.tasks.cluster import discovery_client

    validate(manifests)
    dyn = discovery_client(api_client)
    done: dict[str, list[str]] = {"created": [], "changed": [], "unchanged": [], "deleted": []}
    wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    scaled = {m["spec"]["scaleTargetRef"]["name"] for m in manifests if m["kind"] == "HorizontalPodAutoscaler"}
    for m in manifests:
        name = m["metadata"]["name"]
        resource = dyn.resources.get(api_version=m["apiVersion"], kind=m["kind"])
        live = read_object(dyn, resource, name, namespace)
        body = m
        if m["kind"] == "Deployment" and name in scaled:
            body = {**m, "spec": {k: v for k, v in m["spec"].items() if k != "replicas"}}
            if live is None:  # created at its pods count, which the hand-over manager then holds
                live = apply_object(dyn, resource, m, namespace, FIELD_MANAGER)
                done["created"].append(f"{m['kind']}/{name}")
            if _owns(live, FIELD_MANAGER, "replicas"):
                replicas = {"apiVersion": m["apiVersion"], "kind": m["kind"],
                            "metadata": {"name": name, "namespace": namespace},
                            "spec": {"replicas": live["spec"].get("replicas", m["spec"]["replicas"])}}
                apply_object(dyn, resource, replicas, namespace, HANDOVER_MANAGER)
        after = apply_object(dyn, resource, body, namespace, FIELD_MANAGER)
        if f"{m['kind']}/{name}" in done["created"]:
            continue
        outcome = ("created" if live is None else
                   "unchanged" if after["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]
                   else "changed")
        done[outcome].append(f"{m['kind']}/{name}")
    done["deleted"] = [f"{kind}/{name}" for kind, name in _stage_objects(api_client, namespace, endpoint, stage)
                       if (kind, name) not in wanted and _delete(api_client, kind, name, namespace)]
    return done


def read_object(dyn: Any, resource: Any, name: str, namespace: str) -> dict[str, Any] | None:
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        return dyn.get(resource, name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def apply_object(dyn: Any, resource: Any, body: dict[str, Any], namespace: str, manager: str) -> dict[str, Any]:
    return dyn.server_side_apply(resource, body=body, namespace=namespace, field_manager=manager,
                                 force_conflicts=True).to_dict()


def _owns(obj: dict[str, Any], manager: str, spec_field: str) -> bool:
    """Whether `manager` owns `spec.<spec_field>` of the object (its managedFields)."""
    for entry in obj.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager and f"f:{spec_field}" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


def delete_stage(api_client: Any, namespace: str, endpoint: str, stage: str) -> list[str]:
    """Delete every object of the stage (found by its labels); what was deleted, as `Kind/name`."""
    return [f"{kind}/{name}" for kind, name in _stage_objects(api_client, namespace, endpoint, stage)
            if _delete(api_client, kind, name, namespace)]


def _api(api_client: Any, kind: str) -> tuple[Any, str]:
    import kubernetes.client

    cls, stem = _KINDS[kind]
    return getattr(kubernetes.client, cls)(api_client), stem


def _read(api: Any, stem: str, name: str, namespace: str) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return getattr(api, f"read_namespaced_{stem}")(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _stage_objects(api_client: Any, namespace: str, endpoint: str, stage: str) -> list[tuple[str, str]]:
    selector = f"{LABEL}/endpoint={endpoint},{LABEL}/stage={stage}"
    found = []
    for kind in _KINDS:
        api, stem = _api(api_client, kind)
        for item in getattr(api, f"list_namespaced_{stem}")(namespace, label_selector=selector).items:
            found.append((kind, item.metadata.name))
    return found


def _delete(api_client: Any, kind: str, name: str, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    api, stem = _api(api_client, kind)
    try:
        getattr(api, f"delete_namespaced_{stem}")(name, namespace)
    except ApiException as exc:
        if exc.status == 404:  # already gone
            return False
        raise
    return True


def _cpu(cores: float) -> str:
    return f"{int(round(cores * 1000))}m"



def cluster_client(field: str, instance_type: str) -> Any:
    """An API client for the configured cluster (KUBECONFIG, ~/.kube/config, or in-cluster), or a
    SpecError naming the instance type when none is configured."""

    from kubernetes import client, config

    try:  # KUBECONFIG as it is now (the client reads it once, when first imported)
        config.load_kube_config(config_file=kubeconfig_path())
    except Exception:  # noqa: BLE001 - no kube config: try the in-cluster one
        try:
            config.load_incluster_config()
        except Exception as exc:  # noqa: BLE001
            raise SpecError(field, instance_type, "'local' on this machine, or a node pool of a configured "
                            f"Kubernetes cluster (none is configured: {exc})") from None
    return client.ApiClient()


def wait_deployments_ready(api_client: Any, manifests: list[dict[str, Any]], namespace: str, timeout: float) -> None:
    """Until every Deployment of `manifests` has all its pods ready; TimeoutError naming the first that has not."""
    from kubernetes import client

    apps = client.AppsV1Api(api_client)
    deadline = time.monotonic() + timeout
    for m in (m for m in manifests if m["kind"] == "Deployment"):
        name, want = m["metadata"]["name"], m["spec"].get("replicas", 1)
        while True:
            status = apps.read_namespaced_deployment(name, namespace).status
            if status is not None and (status.ready_replicas or 0) >= want:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Deployment {name} has {getattr(status, 'ready_replicas', 0) or 0} of {want} pods "
                                   f"ready after {timeout:.0f} s; see `kubectl -n {namespace} describe deployment {name}`")
            time.sleep(2.0)


def service_url(api_client: Any, template: str, service: str, namespace: str, port: int) -> str | None:
    """Where the gateway reaches a Service, by the settings' kube_service_url `template` ({service}, {namespace},
    {port}, {cluster_ip}: read from the cluster only when the template names it); None when it names a cluster IP
    the Service has not."""
    ip = ""
    if "{cluster_ip}" in template:
        from kubernetes import client

        ip = client.CoreV1Api(api_client).read_namespaced_service(service, namespace).spec.cluster_ip or ""
        if ip in ("", "None"):
            return None
    return template.format(service=service, namespace=namespace, port=port, cluster_ip=ip)
