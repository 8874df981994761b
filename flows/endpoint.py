"""What the endpoint flows share (one module per change beside it: endpoint_deploy, endpoint_add_stage,
endpoint_promote, endpoint_delete, endpoint_retry, endpoint_stop, endpoint_start, endpoint_sync), each
change a flow run: deploy an endpoint, add a stage, promote a stage to the default,
delete a stage or the endpoint, and retry a failed stage.

Deploying a stage (deploy-endpoint, add-endpoint-stage, retry-endpoint-stage):
1. Check everything before any change: the name is free, every model version exists, the stage fits
   where it runs (at most 8 local replicas; a configured cluster for other instance types).
2. Record it (CREATE REQUESTED, then CREATE IN PROGRESS).
3. Start the replicas: locally `mlyard serve` processes that `mlyard up` supervises; on Kubernetes (an
   instance type other than `local`) a Deployment, a Service and an HPA per resource, from infra/.
4. Wait until every replica is healthy, or every pod ready (DEPLOY IN PROGRESS).
5. Put them into the gateway's routing and check that it routes them (gateway: STAGE DEPLOYING, then
   ACTIVE), then mark everything ACTIVE.
6. On any failure, roll back: the replicas are stopped (no orphaned process; on Kubernetes the stage's
   objects are deleted) and the stage records
   CREATE FAILED with why (the gateway status STAGE DEPLOY FAIL when routing failed).

Promoting (promote-endpoint-stage): the catalog makes the stage the default, the gateway moves traffic
at once, the old default's outstanding requests are answered (drain), then its replicas stop and it is
deleted. Deleting (delete-endpoint): the rules are checked first, then the replicas stop and the
records go; the serving history stays.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field

from mlyard.core.connection import gateway_url
from mlyard.core.errors import StackError
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks import replicas as files
from mlyard.tasks.endpoint_cluster import kube_apply, kube_delete, kube_route, kube_unroute, kube_wait_ready, sync_route
from mlyard.tasks.endpoints import (
    LOCAL,
    RoutingFailed,
    local_replicas,
    route,
    stage_keys,
    start_replicas,
    stop_replicas,
    supervisor_running,
    version_params,
    wait_healthy,
)
from mlyard.tasks.served import served_versions


class EndpointResult(BaseModel):
    """An endpoint after a change, as `mlyard endpoints show` gives it, with the URL of each route."""

    id: int = Field(description="The endpoint's id in the catalog.")
    name: str = Field(description="The endpoint's name.")
    description: str | None = Field(description="Its description.")
    public: bool = Field(description="Open to public (no token needed).")
    status: str = Field(description="Its status as the seeds name them (ACTIVE, CREATE FAILED, ...).")
    reason: str | None = Field(description="Why it is in that status, when it failed.")
    default_stage: str | None = Field(description="The stage its plain URL answers from.")
    created_at: str = Field(description="When it was created (ISO 8601).")
    stages: list[dict[str, Any]] = Field(description="Its stages with their resources, statuses and reasons.")
    urls: dict[str, Any] = Field(description="Where each stage and model answers, through the gateway.")


class DeletionResult(BaseModel):
    deleted: str = Field(description="What was deleted: ENDPOINT or ENDPOINT/STAGE.")


class SyncResult(EndpointResult):
    config: dict[str, Any] = Field(description="inference.config.json as written into the pushed folder, and its path.")


def urls(base_url: str, view: dict[str, Any], kinds: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The URLs a user calls: per stage and model, and the default stage's. `kinds` ("name/version" ->
    entry-script or model-folder) gives pushed code its own route (/score, or the folder's base)."""
    def route(m: str, st: dict[str, Any]) -> str:
        mine = [r for r in st["resources"] if r["model"].rsplit("/", 1)[0] == m]
        kind = next((kinds.get(r["model"]) for r in mine), None) if kinds else None
        if any((r.get("runtime") or {}).get("variant", "custom") != "custom" for r in mine):
            kind = "model-folder"  # an inference engine: its own routes (OpenAI's /v1/...) under the base
        return {"entry-script": f"/{m}/score", "model-folder": f"/{m}", "chat": f"/{m}/openai/v1"}.get(
            kind or "", f"/{m}/v1/models/{m}:predict")

    out: dict[str, Any] = {"default": {}, "stages": {}}
    for st in view["stages"]:
        models = sorted({r["model"].rsplit("/", 1)[0] for r in st["resources"]})
        base = f"{base_url}/{view['name']}/stages/{st['name']}"
        out["stages"][st["name"]] = {m: base + route(m, st) for m in models}
        if st["default"]:
            out["default"] = {m: f"{base_url}/{view['name']}" + route(m, st) for m in models}
    return out


def code_kinds(models: Any, view: dict[str, Any]) -> dict[str, str | None]:
    """Which of the view's model versions are pushed code, and of which kind; a chat model (parameter task=chat)
    is `chat`: its URL is the base of OpenAI's routes, as clients take it."""
    def kind(model: str) -> str | None:
        params = models.get_version(*model.rsplit("/", 1)).parameters
        return params.get(files.CODE_KIND) or ("chat" if params.get("task") == "chat" else None)

    return {r["model"]: kind(r["model"]) for st in view["stages"] for r in st["resources"]}


def with_urls(p: Platform, eps: Endpoints, name: str) -> EndpointResult:
    """What every endpoint change returns: the endpoint as it is now, with the URL of each route."""
    view = eps.get(name)
    return EndpointResult(**view, urls=urls(gateway_url(p.settings), view, code_kinds(p.models, view)))


def sync_http_route(p: Platform, eps: Endpoints, endpoint: str, deleted: bool = False,
                    without: str | None = None) -> None:
    """On a cluster that routes with the Gateway API (MLYARD_HTTP_ROUTE_GATEWAY): the endpoint's HTTPRoute
    as its stages and shares are now, after every change of them; `without` a stage about to be deleted
    (before its Services go), deleted with the endpoint."""
    if p.settings.http_route_gateway:
        view = None if deleted else eps.get(endpoint)
        if view is not None and without is not None:
            view = {**view, "stages": [s for s in view["stages"] if s["name"] != without]}
        done = sync_route(endpoint, view, p.settings.http_route_gateway)
        get_run_logger().info("HTTPRoute of %s: %s", endpoint, done)


def teardown(home, gw: str, endpoint: str, st: dict[str, Any], eps: Endpoints) -> None:
    """Take a stage out of routing and end what runs it: local replicas, or its Kubernetes objects."""
    stop_replicas(home, gw, stage_keys(home, endpoint, st["name"]))
    if st["instance_type"] != LOCAL:
        kube_unroute(eps, gw, eps.get(endpoint), st["name"])
        kube_delete(endpoint, st["name"], st["instance_type"])


def deploy_stage(p: Platform, eps: Endpoints, endpoint: str, stage: str, creating: bool) -> None:
    """Steps 2-6 for a stage already recorded."""
    logger = get_run_logger()
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    view = eps.get(endpoint)
    st = next(s for s in view["stages"] if s["name"] == stage)
    if creating:
        eps.set_status(endpoint, "CREATE IN PROGRESS")
    eps.set_status(endpoint, "CREATE IN PROGRESS", stage, gateway_status="CREATE IN PROGRESS")
    for r in st["resources"]:
        eps.set_status(endpoint, "CREATE IN PROGRESS", stage, r["id"])
    keys: list[str] = []
    local = st["instance_type"] == LOCAL
    try:
        if local:
            if not supervisor_running(home):
                raise StackError("no replica supervisor runs for this home: start the stack with `mlyard up`")
            # 3. Start the replicas.
            wanted = local_replicas(home, view, stage, served_versions(p, view, stage))
            keys = start_replicas(home, wanted)
            logger.info("started %d replica(s) of %s/%s: %s", len(keys), endpoint, stage, ", ".join(keys))
            # 4. Wait until they are healthy.
            eps.set_status(endpoint, "DEPLOY IN PROGRESS", stage)
            wait_healthy(home, keys)
        else:
            # 3. Deployments, Services and HPAs on the cluster; 4. wait until their pods are ready.
            manifests = kube_apply(view, stage, version_params(p.models, view, stage))
            logger.info("applied %s", ", ".join(f"{m['kind']}/{m['metadata']['name']}" for m in manifests))
            eps.set_status(endpoint, "DEPLOY IN PROGRESS", stage)
            kube_wait_ready(st["instance_type"], manifests)
            keys = kube_route(eps, view, stage, manifests)
        # 5. Routing.
        eps.set_status(endpoint, "DEPLOY IN PROGRESS", stage, gateway_status="STAGE DEPLOYING")
        route(home, gw, endpoint, stage, keys)
        for r in st["resources"]:
            eps.set_status(endpoint, "ACTIVE", stage, r["id"])
        eps.set_status(endpoint, "ACTIVE", stage, gateway_status="ACTIVE")
        eps.set_status(endpoint, "ACTIVE")
        logger.info("%s/%s is ACTIVE", endpoint, stage)
        sync_http_route(p, eps, endpoint)
    except BaseException as exc:
        # 6. Roll back: no replica outlives a failed deploy.
        logger.error("deploying %s/%s failed, rolling back: %s", endpoint, stage, exc)
        teardown(home, gw, endpoint, st, eps)
        reason = str(exc)[:2000]
        gateway_status = "STAGE DEPLOY FAIL" if isinstance(exc, RoutingFailed) else None
        for r in st["resources"]:
            eps.set_status(endpoint, "CREATE FAILED", stage, r["id"], reason=reason)
        eps.set_status(endpoint, "CREATE FAILED", stage, reason=reason, gateway_status=gateway_status)
        eps.set_status(endpoint, "CREATE FAILED" if creating else "ACTIVE", reason=reason if creating else "")
        raise
