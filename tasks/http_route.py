"""An endpoint's traffic shares as a Gateway API HTTPRoute (gateway.networking.k8s.io/v1), for a cluster
that routes with its own Gateway instead of mlyard's gateway (`MLYARD_HTTP_ROUTE_GATEWAY` names it).

One rule per model of the default stage, matching `/{endpoint}/{model}/` and rewriting that prefix to
`/` (the model server's own paths, as mlyard's gateway passes them): its backends are the Services of
the stages that answer it (tasks/kubernetes.py's names), weighted as the catalog's shares (the default
stage takes the rest), and a stage's shadow share is a RequestMirror filter with that percent. A named
stage keeps its own rule (`/{endpoint}/stages/{stage}/{model}/`). The endpoint flows keep it as the
catalog is after every change (flows/endpoint.py `sync_http_route`): a stage deployed, a share, a
promotion; a stage's rule goes before its Services, the route with the endpoint. So the same policy
drives both kinds of routing.

What mlyard's gateway does and a Gateway API route cannot, and is the cluster Gateway's to do: the
endpoint's token check, and the replicas' credential (`x-mlyard-replica`, from the settings Secret) that
the stage's pods require; the stage's NetworkPolicy must also admit the Gateway's pods.
"""

from __future__ import annotations

from typing import Any

from mlyard.tasks.kubernetes import LABEL, PORT, resource_name

API_VERSION = "gateway.networking.k8s.io/v1"


def route_name(endpoint: str) -> str:
    return f"mlyard-{endpoint}"[:63]


def _backends(view: dict[str, Any], stage: dict[str, Any], model: str) -> list[dict[str, Any]]:
    return [{"name": resource_name(view["name"], stage["name"], r["id"]), "port": PORT}
            for r in stage["resources"] if r["model"].rsplit("/", 1)[0] == model]


def _rule(prefix: str, backends: list[tuple[dict[str, Any], int | None]],
          mirrors: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [{"type": "URLRewrite", "urlRewrite": {
        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]
    filters += [{"type": "RequestMirror", "requestMirror": {"backendRef": ref, "percent": percent}}
                for ref, percent in mirrors]
    refs = [{**ref, **({"weight": weight} if weight is not None else {})} for ref, weight in backends]
    return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}], "filters": filters, "backendRefs": refs}


def render_http_route(view: dict[str, Any], gateway: str, namespace: str = "mlyard",
                      gateway_namespace: str | None = None) -> dict[str, Any] | None:
    """The HTTPRoute of an endpoint view (`Endpoints.get`), attached to the Gateway `gateway`: its stages
    that run on the cluster (a `local` stage has no Service); None when its default stage runs locally."""
    view = {**view, "stages": [s for s in view["stages"] if s.get("instance_type") != "local"]}
    default = next((s for s in view["stages"] if s["default"]), None)
    if default is None:
        return None
    models = sorted({r["model"].rsplit("/", 1)[0] for r in default["resources"]})
    total = sum(s.get("weight", 0) for s in view["stages"] if not s["default"])
    rules = []
    for model in models:
        backends: list[tuple[dict[str, Any], int | None]] = []
        mirrors: list[tuple[dict[str, Any], int]] = []
        for st in view["stages"]:
            refs = _backends(view, st, model)
            if st["default"]:  # the default stage's share is split evenly over its resources for this model
                backends += [(ref, (100 - total) // len(refs) if total else 1) for ref in refs]
            elif refs and st.get("weight"):
                backends += [(ref, st["weight"] // len(refs)) for ref in refs]
            elif refs and st.get("shadow"):
                mirrors.append((refs[0], st["shadow"]))
        rules.append(_rule(f"/{view['name']}/{model}/", backends, mirrors))
        for st in view["stages"]:
            refs = _backends(view, st, model)
            if refs:
                rules.append(_rule(f"/{view['name']}/stages/{st['name']}/{model}/", [(r, None) for r in refs], []))
    parent: dict[str, Any] = {"name": gateway}
    if gateway_namespace:
        parent["namespace"] = gateway_namespace
    return {"apiVersion": API_VERSION, "kind": "HTTPRoute",
            "metadata": {"name": route_name(view["name"]), "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "mlyard", f"{LABEL}/endpoint": view["name"]}},
            "spec": {"parentRefs": [parent], "rules": rules}}


def apply_http_route(api_client: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of the HTTPRoute under the field manager `mlyard`; the object as the API holds it."""
    from mlyard.tasks.cluster import discovery_client
    from mlyard.tasks.kubernetes import FIELD_MANAGER

    dyn = discovery_client(api_client)
    resource = dyn.resources.get(api_version=API_VERSION, kind="HTTPRoute")
    return dyn.server_side_apply(resource, body=manifest, namespace=manifest["metadata"]["namespace"],
                                 field_manager=FIELD_MANAGER, force_conflicts=True).to_dict()


def delete_http_route(api_client: Any, endpoint: str, namespace: str) -> bool:
    """Delete the endpoint's HTTPRoute; False when there was none."""
    from kubernetes.dynamic.exceptions import NotFoundError

    from mlyard.tasks.cluster import discovery_client

    dyn = discovery_client(api_client)
    try:
        dyn.resources.get(api_version=API_VERSION, kind="HTTPRoute").delete(name=route_name(endpoint),
                                                                             namespace=namespace)
    except NotFoundError:
        return False
    return True
