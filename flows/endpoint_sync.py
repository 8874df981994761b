"""Push a folder's latest code (entry script or model folder) to an endpoint.

1. Check the code and the target before any change.
2. The code becomes a model version.
3. A new endpoint is deployed as any other; an existing one has its replicas replaced one at a time (rolled back on failure).
4. inference.config.json gets the URL.
"""

from __future__ import annotations

import copy
import dataclasses
import time

from prefect import flow, get_run_logger

from mlyard.core.connection import gateway_url
from mlyard.core.names import FLOW_SYNC_ENDPOINT
from mlyard.core.specs.endpoint import (
    EndpointSpec,
    StageResourceSpec,
    StageSpec,
    SyncSpec,
)
from mlyard.flows.endpoint import (
    SyncResult,
    deploy_stage,
    with_urls,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.serving import modelfolder
from mlyard.tasks import replicas as files
from mlyard.tasks.endpoints import (
    check_code,
    check_target,
    drain,
    gateway,
    local_replicas,
    register_code,
    route,
    start_replicas,
    stop_replicas,
    wait_healthy,
)
from mlyard.tasks.inference_config import write_config
from mlyard.tasks.orchestration import run_name, run_project
from mlyard.tasks.served import served_versions


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
    template = local_replicas(home, view, stage, served_versions(p, view, stage))[0]
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


@flow(name=FLOW_SYNC_ENDPOINT, flow_run_name=run_name(FLOW_SYNC_ENDPOINT),
      description="Push a folder's latest code (entry script or model folder) to an endpoint: a new model version, "
                  "replicas replaced one at a time with no failed request; the URL goes to inference.config.json.")
def sync_endpoint(spec: SyncSpec) -> SyncResult:
    logger = get_run_logger()
    p = Platform()
    eps = Endpoints(p.catalog)
    name = spec.model or spec.endpoint
    # 1. Check everything before any change.
    code = check_code(spec, modelfolder.load)
    target = check_target(eps, spec, code, p.settings.home_dir)
    # 2. The code becomes a model version.
    version = register_code(p.models, name, code, run_project())  # the model and the endpoint: the run's project
    logger.info("pushed %s as %s/%s (%s)", code.folder, *version, code.kind)
    if target is None:
        # 3. A new endpoint: deployed as any other.
        ep_spec = EndpointSpec(name=spec.endpoint, public=spec.public, description=f"code pushed from {code.folder}",
                               stage=StageSpec(max_replicas=code.max_replicas, resources=[
                                   StageResourceSpec(model=f"{version[0]}/{version[1]}", pods=spec.replicas)]))
        eps.create(ep_spec, [version], run_project())
        deploy_stage(p, eps, spec.endpoint, ep_spec.stage.name, creating=True)
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
    # 4. inference.config.json gets the URL.
    config = {"path": str(code.config), **write_config(code.config, spec.endpoint, gateway_url(p.settings),
                                                        version[0], version[1], code.kind)}
    return SyncResult(**with_urls(p, eps, spec.endpoint).model_dump(), config=config)
