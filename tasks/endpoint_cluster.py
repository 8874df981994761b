"""An endpoint flow's steps for a stage on a node pool: each stage resource is a Deployment, a Service, a
NetworkPolicy and (pod autoscaler on) an HPA, rendered from infra/endpoint/ and applied with server-side
apply (tasks/kubernetes.py); the stage is routed through its Services, whose URLs the catalog holds for
every gateway replica (`MLYARD_KUBE_SERVICE_URL`), and taken out of routing before its objects go.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlyard.core.errors import RoutingFailed
from mlyard.core.settings import Settings
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks import replicas as files
from mlyard.tasks.endpoints import gateway


def namespace() -> str:
    return Settings().kube_namespace


@task(name="apply-manifests", cache_policy=NO_CACHE)
def kube_apply(view: dict[str, Any], stage: str, parameters: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Render the stage's manifests from infra/endpoint/, validate them, and make the cluster hold them."""
    from mlyard.tasks.engine_images import with_service_definition
    from mlyard.tasks.kubernetes import apply_stage, cluster_client, render_stage

    st = next(s for s in view["stages"] if s["name"] == stage)
    api = cluster_client("stage.instance_type", st["instance_type"])
    settings = Settings()
    for res in st["resources"]:  # a runtime variant's image and environment from its service-definition.toml
        if (res.get("runtime") or {}).get("variant", "custom") != "custom":
            res["runtime"] = with_service_definition(res["runtime"], res["model"])
    manifests = render_stage(view, stage, image=settings.serving_image or settings.image, namespace=namespace(),
                             parameters=parameters, settings_secret=settings.settings_secret)
    apply_stage(api, manifests, namespace(), view["name"], stage)
    return manifests


@task(name="sync-http-route", cache_policy=NO_CACHE)
def sync_route(endpoint: str, view: dict[str, Any] | None, gateway_ref: str) -> str:
    """The endpoint's HTTPRoute (tasks/http_route.py) for the Gateway `gateway_ref` (NAME or NAMESPACE/NAME)
    as the catalog's `view` of it is now: applied, or deleted when the endpoint is gone (`view` None) or
    its default stage runs locally. What was done: applied, deleted or nothing."""
    from mlyard.tasks.http_route import apply_http_route, delete_http_route, render_http_route
    from mlyard.tasks.kubernetes import cluster_client

    gw_namespace, _, gw_name = gateway_ref.rpartition("/")
    manifest = render_http_route(view, gw_name, namespace(), gw_namespace or None) if view is not None else None
    client = cluster_client("http_route_gateway", gateway_ref)
    if manifest is None:
        return "deleted" if delete_http_route(client, endpoint, namespace()) else "nothing"
    apply_http_route(client, manifest)
    return "applied"


@task(name="wait-ready", cache_policy=NO_CACHE)
def kube_wait_ready(instance_type: str, manifests: list[dict[str, Any]], timeout: float = 900.0) -> None:
    """Wait until every Deployment has all its pods ready."""
    from mlyard.tasks.kubernetes import cluster_client, wait_deployments_ready

    try:
        wait_deployments_ready(cluster_client("stage.instance_type", instance_type), manifests, namespace(), timeout)
    except TimeoutError as exc:
        raise files.ReplicaFailed(str(exc)) from None


@task(name="route-services", cache_policy=NO_CACHE)
def kube_route(endpoints: Endpoints, view: dict[str, Any], stage: str, manifests: list[dict[str, Any]]) -> list[str]:
    """Record in the catalog where the gateway reaches each stage resource, its Service (every gateway
    replica reads it there); the keys under which the gateway routes them."""
    from mlyard.tasks.kubernetes import cluster_client, service_url

    st = next(s for s in view["stages"] if s["name"] == stage)
    services = {m["metadata"]["labels"].get("mlyard.io/resource"): m for m in manifests if m["kind"] == "Service"}
    template, api = Settings().kube_service_url, cluster_client("stage.instance_type", st["instance_type"])
    urls: dict[int, str | None] = {}
    for r in st["resources"]:
        svc = services[str(r["id"])]
        name, port = svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]
        url = service_url(api, template, name, namespace(), port)
        if url is None:
            raise RoutingFailed(f"the Service {name} has no cluster IP for kube_service_url to use")
        urls[r["id"]] = url
    endpoints.set_service_urls(view["name"], stage, urls)
    return [files.key_of(view["name"], stage, rid, 0) for rid in urls]


@task(name="unroute-services", cache_policy=NO_CACHE)
def kube_unroute(endpoints: Endpoints, gateway_url: str | None, view: dict[str, Any], stage: str) -> None:
    """Take a cluster-run stage's Services out of the catalog's routing and tell the gateway."""
    st = next(s for s in view["stages"] if s["name"] == stage)
    if not any(r.get("service_url") for r in st["resources"]):
        return
    endpoints.set_service_urls(view["name"], stage, {r["id"]: None for r in st["resources"]})
    if gateway_url is not None:
        try:
            gateway(gateway_url, "/mlyard/reload", "POST")
        except RoutingFailed:
            pass  # no gateway answers: every replica reads the catalog again within a second


@task(name="delete-manifests", cache_policy=NO_CACHE)
def kube_delete(endpoint: str, stage: str, instance_type: str) -> list[str]:
    from mlyard.tasks.kubernetes import cluster_client, delete_stage

    return delete_stage(cluster_client("stage.instance_type", instance_type), namespace(), endpoint, stage)
