"""Endpoint changes, each a flow run: deploy an endpoint, add a stage, promote a stage to the default,
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

import copy
import dataclasses
import time
from typing import Any

from prefect import flow, get_run_logger

from core.connection import gateway_url
from core.errors import Protected, StackError
from core.names import (
    FLOW_ADD_STAGE,
    FLOW_DELETE_ENDPOINT,
    FLOW_DEPLOY_ENDPOINT,
    FLOW_PROMOTE_STAGE,
    FLOW_SYNC_ENDPOINT,
)
from core.specs.endpoint import (
    DeletionSpec,
    EndpointSpec,
    PromotionSpec,
    StageChangeSpec,
    StageResourceSpec,
    StageSpec,
    SyncSpec,
)
from flows.platform import Platform
from registry.endpoints import Endpoints
from serving import modelfolder
from tasks import replicas as files
from tasks.endpoints import (
    LOCAL,
    RoutingFailed,
    check_code,
    check_stage,
    check_target,
    drain,
    gateway,
    kube_apply,
    kube_delete,
    kube_replicas,
    kube_wait_ready,
    local_replicas,
    register_code,
    route,
    stage_keys,
    start_replicas,
    stop_replicas,
    supervisor_running,
    version_params,
    wait_healthy,
    write_config,
)


def urls(base_url: str, view: dict[str, Any], kinds: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The URLs a user calls: per stage and model, and the default stage's. `kinds` ("name/version" ->
    entry-script or model-folder) gives pushed code its own route (/score, or the folder's base)."""
    def route(m: str, st: dict[str, Any]) -> str:
        kind = next((kinds.get(r["model"]) for r in st["resources"] if r["model"].rsplit("/", 1)[0] == m), None) \
            if kinds else None
        return {"entry-script": f"/{m}/score", "model-folder": f"/{m}"}.get(kind or "", f"/{m}/v1/models/{m}:predict")

    out: dict[str, Any] = {"default": {}, "stages": {}}
    for st in view["stages"]:
        models = sorted({r["model"].rsplit("/", 1)[0] for r in st["resources"]})
        base = f"{base_url}/{view['name']}/stages/{st['name']}"
        out["stages"][st["name"]] = {m: base + route(m, st) for m in models}
        if st["default"]:
            out["default"] = {m: f"{base_url}/{view['name']}" + route(m, st) for m in models}
    return out


def code_kinds(models: Any, view: dict[str, Any]) -> dict[str, str | None]:
    """Which of the view's model versions are pushed code, and of which kind."""
    return {r["model"]: models.get_version(*r["model"].rsplit("/", 1)).parameters.get(files.CODE_KIND)
            for st in view["stages"] for r in st["resources"]}


def _with_urls(p: Platform, eps: Endpoints, name: str) -> dict[str, Any]:
    view = eps.get(name)
    return {**view, "urls": urls(gateway_url(p.settings), view, code_kinds(p.models, view))}


def _teardown(home, gw: str, endpoint: str, st: dict[str, Any]) -> None:
    """Take a stage out of routing and end what runs it: local replicas, or its Kubernetes objects."""
    stop_replicas(home, gw, stage_keys(home, endpoint, st["name"]))
    if st["instance_type"] != LOCAL:
        kube_delete(endpoint, st["name"], st["instance_type"])


def _deploy_stage(p: Platform, eps: Endpoints, endpoint: str, stage: str, creating: bool) -> None:
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
            wanted = local_replicas(home, view, stage, version_params(p.models, view, stage))
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
            keys = start_replicas(home, kube_replicas(view, stage, manifests))
        # 5. Routing.
        eps.set_status(endpoint, "DEPLOY IN PROGRESS", stage, gateway_status="STAGE DEPLOYING")
        route(home, gw, endpoint, stage, keys)
        for r in st["resources"]:
            eps.set_status(endpoint, "ACTIVE", stage, r["id"])
        eps.set_status(endpoint, "ACTIVE", stage, gateway_status="ACTIVE")
        eps.set_status(endpoint, "ACTIVE")
        logger.info("%s/%s is ACTIVE", endpoint, stage)
    except BaseException as exc:
        # 6. Roll back: no replica outlives a failed deploy.
        logger.error("deploying %s/%s failed, rolling back: %s", endpoint, stage, exc)
        _teardown(home, gw, endpoint, st)
        reason = str(exc)[:2000]
        gateway_status = "STAGE DEPLOY FAIL" if isinstance(exc, RoutingFailed) else None
        for r in st["resources"]:
            eps.set_status(endpoint, "CREATE FAILED", stage, r["id"], reason=reason)
        eps.set_status(endpoint, "CREATE FAILED", stage, reason=reason, gateway_status=gateway_status)
        eps.set_status(endpoint, "CREATE FAILED" if creating else "ACTIVE", reason=reason if creating else "")
        raise


@flow(name=FLOW_DEPLOY_ENDPOINT, flow_run_name="{spec.name}",
      description="Create an endpoint with its default stage: replicas, health, routing; rolled back on failure.")
def deploy_endpoint(spec: EndpointSpec) -> dict[str, Any]:
    p = Platform()
    eps = Endpoints(p.catalog)
    # 1. Check.
    versions = check_stage(eps, p.models, spec.stage, "stage", new_endpoint=spec.name)
    # 2. Record.
    eps.create(spec, versions)
    _deploy_stage(p, eps, spec.name, spec.stage.name, creating=True)
    return _with_urls(p, eps, spec.name)


@flow(name=FLOW_ADD_STAGE, flow_run_name="{spec.endpoint}-{spec.stage.name}",
      description="Add a stage to an endpoint: replicas, health, routing at its own URL; rolled back on failure.")
def add_stage(spec: StageChangeSpec) -> dict[str, Any]:
    p = Platform()
    eps = Endpoints(p.catalog)
    versions = check_stage(eps, p.models, spec.stage, "stage", endpoint=spec.endpoint)
    eps.add_stage(spec.endpoint, spec.stage, versions)
    _deploy_stage(p, eps, spec.endpoint, spec.stage.name, creating=False)
    return _with_urls(p, eps, spec.endpoint)


@flow(name="retry-endpoint-stage", flow_run_name="{spec.endpoint}-{spec.stage}",
      description="Clear a stage's errors and try again: a failed stage is deployed anew; an ACTIVE stage is "
                  "routed again (the console's stage deploy).")
def retry_stage(spec: PromotionSpec) -> dict[str, Any]:
    p = Platform()
    eps = Endpoints(p.catalog)
    view = eps.get(spec.endpoint)
    st = next((s for s in view["stages"] if s["name"] == spec.stage), None)
    if st is None:
        from core.errors import NotFound

        raise NotFound(f"{spec.endpoint}/{spec.stage}")
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    if st["status"] == "ACTIVE":
        keys = stage_keys(home, spec.endpoint, spec.stage)
        try:
            route(home, gw, spec.endpoint, spec.stage, keys)
            eps.set_status(spec.endpoint, "ACTIVE", spec.stage, gateway_status="ACTIVE")
        except RoutingFailed as exc:
            eps.set_status(spec.endpoint, "ACTIVE", spec.stage, reason=str(exc)[:2000], gateway_status="STAGE DEPLOY FAIL")
            raise
    elif st["status"] in ("CREATE FAILED", "DEPLOY FAILED", "UPDATE FAILED"):
        _deploy_stage(p, eps, spec.endpoint, spec.stage, creating=view["status"] == "CREATE FAILED")
    else:
        raise Protected(f"stage {spec.endpoint}/{spec.stage} is {st['status']}; only a failed or ACTIVE stage is retried")
    return _with_urls(p, eps, spec.endpoint)


@flow(name="stop-endpoint-stage", flow_run_name="{spec.endpoint}-{spec.stage}",
      description="Stop a stage's replicas and keep its configuration (VRidge's server stop).")
def stop_stage(spec: PromotionSpec) -> dict[str, Any]:
    p = Platform()
    eps = Endpoints(p.catalog)
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    st = next((s for s in eps.get(spec.endpoint)["stages"] if s["name"] == spec.stage), None)
    if st is None or st["status"] != "ACTIVE":
        raise Protected(f"stage {spec.endpoint}/{spec.stage} is {st['status'] if st else 'missing'}; only an ACTIVE "
                        "stage is stopped")
    _teardown(home, gw, spec.endpoint, st)
    for r in st["resources"]:
        eps.set_status(spec.endpoint, "STOPPED", spec.stage, r["id"])
    eps.set_status(spec.endpoint, "STOPPED", spec.stage, reason="stopped; start it again with `mlyard servers start`",
                   gateway_status="NOT FOUND: STAGE")
    if all(s["status"] == "STOPPED" or s["name"] == spec.stage for s in eps.get(spec.endpoint)["stages"]):
        eps.set_status(spec.endpoint, "STOPPED")
    try:  # the gateway's answer for the stage says STOPPED from now on, not at its next read
        gateway(gw, "/mlyard/reload", "POST")
    except RoutingFailed:
        pass  # no gateway runs: nothing to tell
    return _with_urls(p, eps, spec.endpoint)


@flow(name="start-endpoint-stage", flow_run_name="{spec.endpoint}-{spec.stage}",
      description="Start a stopped stage again: replicas, health, routing (VRidge's server start).")
def start_stage(spec: PromotionSpec) -> dict[str, Any]:
    p = Platform()
    eps = Endpoints(p.catalog)
    st = next((s for s in eps.get(spec.endpoint)["stages"] if s["name"] == spec.stage), None)
    if st is None or st["status"] != "STOPPED":
        raise Protected(f"stage {spec.endpoint}/{spec.stage} is {st['status'] if st else 'missing'}; only a STOPPED "
                        "stage is started")
    _deploy_stage(p, eps, spec.endpoint, spec.stage, creating=False)
    return _with_urls(p, eps, spec.endpoint)


@flow(name=FLOW_PROMOTE_STAGE, flow_run_name="{spec.endpoint}-{spec.stage}",
      description="Make a stage the endpoint's default: traffic moves at once, the old default drains and is deleted.")
def promote_stage(spec: PromotionSpec) -> dict[str, Any]:
    logger = get_run_logger()
    p = Platform()
    eps = Endpoints(p.catalog)
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    # 1. Check and switch in the catalog (refused unless the stage is ACTIVE).
    old = eps.promote(spec.endpoint, spec.stage)
    if old is None:
        logger.info("%s is already the default stage of %s", spec.stage, spec.endpoint)
        return _with_urls(p, eps, spec.endpoint)
    # 2. The gateway moves traffic now.
    gateway(gw, "/mlyard/reload", "POST")
    logger.info("traffic of %s moved from %s to %s", spec.endpoint, old, spec.stage)
    if spec.keep_old:
        return _with_urls(p, eps, spec.endpoint)
    # 3. Drain the old default, then 4. stop its replicas and delete it.
    left = drain(gw, spec.endpoint, old)
    if left:
        logger.warning("%d request(s) still outstanding on %s/%s after the drain timeout", left, spec.endpoint, old)
    eps.set_status(spec.endpoint, "DELETE IN PROGRESS", old)
    _teardown(home, gw, spec.endpoint, next(s for s in eps.get(spec.endpoint)["stages"] if s["name"] == old))
    eps.delete_stage(spec.endpoint, old, replaced=True)
    logger.info("deleted the old default stage %s/%s", spec.endpoint, old)
    return _with_urls(p, eps, spec.endpoint)


@flow(name=FLOW_DELETE_ENDPOINT, flow_run_name="{spec.endpoint}",
      description="Delete a stage, or an endpoint with its default stage (refused while other stages exist).")
def delete_endpoint(spec: DeletionSpec) -> dict[str, Any]:
    p = Platform()
    eps = Endpoints(p.catalog)
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    # 1. The rules first: nothing stops if the deletion is refused.
    eps.check_delete(spec.endpoint, spec.stage)
    stages = {s["name"]: s for s in eps.get(spec.endpoint)["stages"]}
    if spec.stage is not None:
        eps.set_status(spec.endpoint, "DELETE IN PROGRESS", spec.stage)
        _teardown(home, gw, spec.endpoint, stages[spec.stage])
        eps.delete_stage(spec.endpoint, spec.stage)
        return {"deleted": f"{spec.endpoint}/{spec.stage}"}
    eps.set_status(spec.endpoint, "DELETE IN PROGRESS")
    for st in stages.values():
        _teardown(home, gw, spec.endpoint, st)
    eps.delete(spec.endpoint)
    return {"deleted": spec.endpoint}


def _roll(p: Platform, eps: Endpoints, endpoint: str, stage: str, resource_id: int, model: str,
          cap: int | None, only: list[str] | None = None) -> list[str]:
    """Replace the resource's replicas by replicas of `model` ("name/version"), one at a time, so that
    no request fails: while the cap allows one more, the new replica starts, becomes healthy and takes
    requests before an old one leaves routing, answers what it holds (drain) and stops; at the cap, an
    old one leaves first (the others take its requests). The keys of the new replicas. On failure the
    new replica that failed is stopped and ReplicaFailed/RoutingFailed says why; `done` on the error
    holds the (old, new) pairs already swapped, for the caller to roll back. `only`: replace just
    these replicas."""
    logger = get_run_logger()
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    view = copy.deepcopy(eps.get(endpoint))
    st = next(s for s in view["stages"] if s["name"] == stage)
    st["resources"] = [{**r, "model": model} for r in st["resources"] if r["id"] == resource_id]
    template = local_replicas(home, view, stage, version_params(p.models, view, stage))[0]
    present = files.of_stage(home, endpoint, stage, resource_id)
    top = max((w.index for w in present), default=-1)
    old = sorted((w for w in present if only is None or w.key in only), key=lambda w: w.index)
    done: list[tuple[str, str]] = []
    for n, leaving in enumerate(old, 1):
        top += 1
        fresh = dataclasses.replace(template, key=files.key_of(endpoint, stage, resource_id, top), index=top,
                                    created_at=time.time(), routed=False)
        surge = cap is None or len(present) < cap or len(present) == 1  # one replica: never leave it empty
        try:
            if not surge:
                _retire(home, gw, endpoint, stage, leaving.key)
            start_replicas(home, [fresh])
            wait_healthy(home, [fresh.key])
            route(home, gw, endpoint, stage, [fresh.key])
        except BaseException as exc:
            stop_replicas(home, gw, [fresh.key])
            if not surge:  # the old one left first: bring it back (its wanted file, as it was)
                files.want(home, dataclasses.replace(leaving, routed=False))
                wait_healthy(home, [leaving.key])
                route(home, gw, endpoint, stage, [leaving.key])
            exc.done = done  # type: ignore[attr-defined]
            raise
        done.append((leaving.key, fresh.key))
        if surge:  # the new one serves: the old one leaves (should this fail, both serve; `done` has the pair)
            try:
                _retire(home, gw, endpoint, stage, leaving.key)
            except BaseException as exc:
                exc.done = done  # type: ignore[attr-defined]
                raise
        logger.info("replica %d of %d of %s/%s now serves %s (%s replaced %s)", n, len(old), endpoint, stage,
                    model, fresh.key, leaving.key)
    return [new for _, new in done]


def _retire(home, gw: str, endpoint: str, stage: str, key: str) -> None:
    """Take one replica out of routing, let it answer what it holds, then stop it."""
    files.route(home, [key], False)
    gateway(gw, "/mlyard/reload", "POST")
    drain(gw, endpoint, stage, keys=[key])
    stop_replicas(home, None, [key])


@flow(name=FLOW_SYNC_ENDPOINT, flow_run_name="{spec.endpoint}",
      description="Push a folder's latest code (entry script or model folder) to an endpoint: a new model version, "
                  "replicas replaced one at a time with no failed request; the URL goes to inference.config.json.")
def sync_endpoint(spec: SyncSpec) -> dict[str, Any]:
    logger = get_run_logger()
    p = Platform()
    eps = Endpoints(p.catalog)
    name = spec.model or spec.endpoint
    # 1. Check everything before any change.
    code = check_code(spec, modelfolder.load)
    target = check_target(eps, spec, code, p.settings.home_dir)
    # 2. The code becomes a model version.
    version = register_code(p.models, name, code)
    logger.info("pushed %s as %s/%s (%s)", code.folder, *version, code.kind)
    if target is None:
        # 3. A new endpoint: deployed as any other.
        ep_spec = EndpointSpec(name=spec.endpoint, public=spec.public, description=f"code pushed from {code.folder}",
                               stage=StageSpec(max_replicas=code.max_replicas, resources=[
                                   StageResourceSpec(model=f"{version[0]}/{version[1]}", pods=spec.replicas)]))
        eps.create(ep_spec, [version])
        _deploy_stage(p, eps, spec.endpoint, ep_spec.stage.name, creating=True)
    else:
        # 3. An existing one: its replicas replaced one at a time, then the catalog says what it serves.
        stage, rid, cap = target.stage, target.resource_id, target.cap
        eps.set_status(spec.endpoint, "UPDATE IN PROGRESS", stage)
        try:
            _roll(p, eps, spec.endpoint, stage, rid, f"{version[0]}/{version[1]}", cap)
        except BaseException as exc:
            done = getattr(exc, "done", [])
            logger.error("the update of %s failed after %d replica(s): %s; rolling back", spec.endpoint, len(done), exc)
            if done:  # the swapped ones go back to the version that served before
                _roll(p, eps, spec.endpoint, stage, rid, target.model, cap, only=[new for _, new in done])
            eps.set_status(spec.endpoint, "ACTIVE", stage, reason=f"the update to {version[0]}/{version[1]} failed "
                           f"and was rolled back: {str(exc)[:1500]}")
            p.models.delete(*version)  # nothing serves it: no version is left behind by a push that failed
            raise
        eps.set_version(spec.endpoint, stage, rid, version, code.max_replicas)
        eps.set_status(spec.endpoint, "ACTIVE", stage)
    out = _with_urls(p, eps, spec.endpoint)
    out["config"] = {"path": str(code.config), **write_config(code.config, spec.endpoint, gateway_url(p.settings),
                                                              version[0], version[1], code.kind)}
    return out

