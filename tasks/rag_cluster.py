"""A RAG's query service on a cluster (issue 70): what a machine's replica supervisor runs for it
(tasks/rag_service.py), as Kubernetes objects its ingestion run applies, labelled with the RAG's id:

- `rag-ID`: a Deployment of `python -m mlyard.serving.rag` in the platform's image (spec.instance_count pods,
  on the spec's instance type), its Service, and a NetworkPolicy that lets in the gateway's pods alone; the pods
  read the catalog, the vector store and, for an mlyard endpoint as its LLM alone, the internal credential: those
  keys of the settings Secret and nothing more, and no service account token;
- `rag-ID-llm`, only when the RAG writes answers with a model of its own (the built-in SmolLM2: a model folder
  runs on one machine alone, `refused`): `mlyard serve --chat-model` in the serving image, which only the
  query service's pods reach and which reaches nothing.

The gateway routes `rag:NAME` by the query Service's URL the catalog holds (`Rags.set_service_urls`), as it routes
a stage resource's; every pod answers only the replicas' credential (MLYARD_REPLICA_TOKEN), health checks aside.
Deleting the RAG queues a run that deletes its objects by that label (`withdraw`).
"""

from __future__ import annotations

from typing import Any

from mlyard.core.errors import SpecError
from mlyard.core.specs.rag import RagSpec

LABEL = "mlyard.io"
PORT = 8080
PULL = ("Deployment", "Service", "NetworkPolicy")  # what a RAG's objects are: found and deleted by its label
API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "NetworkPolicy": "networking.k8s.io/v1"}
# what the query service's pods read of the settings Secret (optional keys: one the install does not set is left out);
# the internal credential only when its LLM is an mlyard endpoint, which it passes with
QUERY_SETTINGS = ("mlyard_catalog_url", "mlyard_vector_store_url", "mlyard_internal_token")


def generates_with_own_llm(spec: RagSpec) -> bool:
    """Whether the RAG's answers are written by a model of its own, which then runs beside its query service
    (with the built-in SmolLM2, `auto` answers are the passages' own sentences: no model is asked)."""
    llm = spec.llm
    if llm.endpoint or llm.base_url:
        return False
    return llm.answer == "generate" or (llm.answer == "auto" and llm.model != "smollm2")


def refused(spec: RagSpec) -> None:
    """SpecError for what a RAG on a cluster cannot have: a model folder as its own LLM (its files are not in the
    serving image)."""
    if spec.llm.model_folder() is not None:
        raise SpecError("llm.model", spec.llm.model, "smollm2 on a cluster (a model folder runs on one machine "
                        "alone): put the model on an endpoint of your project and name it in llm.endpoint")


def names(rag_id: int) -> tuple[str, str]:
    """The objects' names of the query service and of the RAG's own LLM."""
    return f"rag-{rag_id}", f"rag-{rag_id}-llm"


def render(name: str, rag_id: int, spec: RagSpec, *, image: str, serving_image: str, namespace: str,
           pull_secrets: tuple[str, ...] = (), egress: list[dict] | None = None,
           settings_secret: str = "mlyard-settings") -> list[dict[str, Any]]:
    """The RAG's objects (see the module); `egress` is a member's pods' (core/environment.member_egress), to
    which the query service adds the gateway's pods and its own LLM's; `settings_secret` the install's Secret of
    MLYARD_* settings."""
    from mlyard.core.environment import member_egress

    query, llm = names(rag_id)
    base = {"app.kubernetes.io/managed-by": "mlyard", f"{LABEL}/rag": name, f"{LABEL}/rag-id": str(rag_id)}
    labels = {"app.kubernetes.io/name": "mlyard-rag", **base, f"{LABEL}/part": "query"}
    llm_labels = {"app.kubernetes.io/name": "mlyard-rag-llm", **base, f"{LABEL}/part": "llm"}
    gateway = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}
    own = generates_with_own_llm(spec)
    reach = [{"to": [gateway, *([{"podSelector": {"matchLabels": _selector(llm_labels)}}] if own else [])],
              "ports": [{"port": PORT, "protocol": "TCP"}]}]
    keys = QUERY_SETTINGS if spec.llm.endpoint else QUERY_SETTINGS[:2]  # the internal credential: for an endpoint alone
    settings = {"name": "settings", "secret": {"secretName": settings_secret, "optional": True, "defaultMode": 0o400,
                                               "items": [{"key": k, "path": k} for k in keys]}}
    out = [*_part(query, namespace, labels, image, spec.instance_count, spec.instance_type, pull_secrets,
                  ["python", "-m", "mlyard.serving.rag", "--rag", name, "--host", "0.0.0.0", "--port", str(PORT)],
                  "/health", {"cpu": "500m", "memory": "1Gi"}, [settings], settings_secret),
           _policy(query, namespace, labels, [gateway], [*(member_egress(stage=True) if egress is None else egress),
                                                         *reach])]
    if own:
        out += [*_part(llm, namespace, llm_labels, serving_image, spec.llm.instance_count, spec.llm.instance_type,
                       pull_secrets, ["mlyard", "serve", "--chat-model", spec.llm.model, "--host", "0.0.0.0", "--port",
                                      str(PORT)], "/v2/health/ready", {"cpu": "1", "memory": "2Gi"}, [], settings_secret),
                _policy(llm, namespace, llm_labels, [{"podSelector": {"matchLabels": _selector(labels)}}], [])]
    return out


def _part(name: str, namespace: str, labels: dict[str, str], image: str, replicas: int, instance_type: str,
          pull_secrets: tuple[str, ...], args: list[str], health: str, requests: dict[str, str],
          volumes: list[dict], settings_secret: str) -> list[dict[str, Any]]:
    """A Deployment of `args` in `image` as the restricted profile has it, and its Service."""
    selector = _selector(labels)
    mounts = [{"name": "tmp", "mountPath": "/tmp"},
              *({"name": v["name"], "mountPath": "/var/run/secrets/mlyard", "readOnly": True} for v in volumes)]
    container = {
        "name": "server", "image": image, "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "MLYARD_HOME", "value": "/tmp/mlyard"},
                {"name": "MLYARD_CACHE_DIR", "value": "/tmp/cache"},
                {"name": "MLYARD_REPLICA_TOKEN",  # it answers the gateway (and its query service) alone
                 "valueFrom": {"secretKeyRef": {"name": settings_secret, "key": "mlyard_replica_token"}}}],
        "envFrom": [{"configMapRef": {"name": "mlyard-config", "optional": True}}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": {"requests": requests, "limits": {"memory": requests["memory"]}},
        "readinessProbe": {"httpGet": {"path": health, "port": "http"}, "periodSeconds": 5},
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts}
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 35,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes]}
    if instance_type != "local":
        pod["nodeSelector"] = {"node.kubernetes.io/instance-type": instance_type}
    if pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    meta = {"name": name, "namespace": namespace, "labels": labels}
    return [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
                "replicas": replicas, "selector": {"matchLabels": selector},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": {"labels": labels}, "spec": pod}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
                "selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}]


def _selector(labels: dict[str, str]) -> dict[str, str]:
    """A part's pods: the RAG's id and the part."""
    return {k: labels[k] for k in (f"{LABEL}/rag-id", f"{LABEL}/part")}


def _policy(name: str, namespace: str, labels: dict[str, str], sources: list[dict], egress: list[dict]) -> dict:
    selector = _selector(labels)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": sources, "ports": [{"protocol": "TCP", "port": "http"}]}],
                     "egress": egress}}


def apply(api_client: Any, manifests: list[dict[str, Any]], namespace: str) -> list[str]:
    """The objects applied with server-side apply (the field manager `mlyard`), and the RAG's objects no longer
    wanted (its own LLM, once it answers by extraction) deleted; what was deleted, as `Kind/name`."""
    from mlyard.tasks.cluster import discovery_client
    from mlyard.tasks.kubernetes import FIELD_MANAGER, apply_object, validate

    validate(manifests)
    dyn = discovery_client(api_client)
    for m in manifests:
        apply_object(dyn, dyn.resources.get(api_version=m["apiVersion"], kind=m["kind"]), m, namespace, FIELD_MANAGER)
    wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    rag_id = manifests[0]["metadata"]["labels"][f"{LABEL}/rag-id"]
    return [f"{kind}/{name}" for kind, name in _objects(dyn, namespace, rag_id) if (kind, name) not in wanted
            and _delete(dyn, kind, name, namespace)]


def withdraw(api_client: Any, namespace: str, rag_id: int) -> list[str]:
    """Delete every object of the RAG `rag_id`; what was deleted, as `Kind/name`."""
    from mlyard.tasks.cluster import discovery_client

    dyn = discovery_client(api_client)
    return [f"{kind}/{name}" for kind, name in _objects(dyn, namespace, str(rag_id)) if _delete(dyn, kind, name, namespace)]


def _objects(dyn: Any, namespace: str, rag_id: str) -> list[tuple[str, str]]:
    found = []
    for kind in PULL:
        resource = dyn.resources.get(api_version=API_VERSIONS[kind], kind=kind)
        for item in dyn.get(resource, namespace=namespace, label_selector=f"{LABEL}/rag-id={rag_id}").items:
            found.append((kind, item.metadata.name))
    return found


def _delete(dyn: Any, kind: str, name: str, namespace: str) -> bool:
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        dyn.delete(dyn.resources.get(api_version=API_VERSIONS[kind], kind=kind), name=name, namespace=namespace)
    except NotFoundError:
        return False
    return True


def service_urls(api_client: Any, manifests: list[dict[str, Any]], namespace: str, template: str) -> dict[str, str]:
    """Where the gateway reaches the query Service, and the query service its LLM's (`template`: the settings'
    kube_service_url), by part: {"query": URL, "llm": URL}."""
    from mlyard.tasks.kubernetes import service_url

    out = {}
    for m in (m for m in manifests if m["kind"] == "Service"):
        name = m["metadata"]["name"]
        url = service_url(api_client, template, name, namespace, m["spec"]["ports"][0]["port"])
        if url is None:
            raise TimeoutError(f"the Service {name} has no cluster IP for kube_service_url to use")
        out[m["metadata"]["labels"][f"{LABEL}/part"]] = url
    return out


def deploy(name: str, rag_id: int, spec: RagSpec) -> tuple[list[dict[str, Any]] | None, str]:
    """A cluster's ingestion run, first: the RAG's objects as its spec says now, applied (its pods load the
    embedding model while the documents are ingested); (them, ""). A run whose account may not apply them (one of
    `rag-sync-gpu`, as the gpu pool's runs are `mlyard-run`) ingests only: (None, why)."""
    from kubernetes.client.exceptions import ApiException

    from mlyard.core.environment import install_pull_secrets
    from mlyard.core.settings import Settings
    from mlyard.tasks.kubernetes import cluster_client

    settings = Settings()
    manifests = render(name, rag_id, spec, image=settings.image, serving_image=settings.serving_image or settings.image,
                       namespace=settings.kube_namespace, pull_secrets=install_pull_secrets(),
                       settings_secret=settings.settings_secret)
    try:
        apply(cluster_client("instance_type", spec.instance_type), manifests, settings.kube_namespace)
    except ApiException as exc:
        if exc.status != 403:
            raise
        return None, ("this run's account may not apply a RAG's query service (rag-sync-kubernetes's may): the "
                      "documents are ingested, and the query service stays as the last such run left it")
    return manifests, ""


def route(rags: Any, rag_id: int, spec: RagSpec, manifests: list[dict[str, Any]], timeout: float = 600.0) -> str:
    """Last, once its pods are ready: the query Service's URL in the catalog, which every gateway replica routes
    by (deploy status COMPLETE); pods not ready within `timeout`: FAILURE and why, the RAG out of routing."""
    from mlyard.core.settings import Settings
    from mlyard.tasks.kubernetes import cluster_client, wait_deployments_ready

    settings = Settings()
    api = cluster_client("instance_type", spec.instance_type)
    try:
        wait_deployments_ready(api, manifests, settings.kube_namespace, timeout)
        urls = service_urls(api, manifests, settings.kube_namespace, settings.kube_service_url)
    except TimeoutError as exc:
        rags.set_service_urls(rag_id, None, "FAILURE")
        return str(exc)
    rags.set_service_urls(rag_id, urls, "COMPLETE")
    return ""
