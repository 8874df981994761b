"""Promote a stage to the endpoint's default.

1. Check and switch in the catalog (refused unless the stage is ACTIVE).
2. The gateway moves traffic at once.
3. Drain the old default's outstanding requests.
4. Stop its replicas and delete it (unless kept).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from mlyard.core.connection import gateway_url
from mlyard.core.names import FLOW_PROMOTE_STAGE
from mlyard.core.specs.endpoint import PromotionSpec
from mlyard.flows.endpoint import (
    EndpointResult,
    sync_http_route,
    teardown,
    with_urls,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks.endpoints import (
    drain,
    gateway,
)
from mlyard.tasks.orchestration import run_name


@flow(name=FLOW_PROMOTE_STAGE, flow_run_name=run_name(FLOW_PROMOTE_STAGE),
      description="Make a stage the endpoint's default: traffic moves at once, the old default drains and is deleted.")
def promote_stage(spec: PromotionSpec) -> EndpointResult:
    logger = get_run_logger()
    p = Platform()
    eps = Endpoints(p.catalog)
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    # 1. Check and switch in the catalog (refused unless the stage is ACTIVE).
    old = eps.promote(spec.endpoint, spec.stage)
    if old is None:
        logger.info("%s is already the default stage of %s", spec.stage, spec.endpoint)
        return with_urls(p, eps, spec.endpoint)
    # 2. The gateway moves traffic now (and the cluster's HTTPRoute, when it routes with the Gateway API).
    gateway(gw, "/mlyard/reload", "POST")
    sync_http_route(p, eps, spec.endpoint)
    logger.info("traffic of %s moved from %s to %s", spec.endpoint, old, spec.stage)
    if spec.keep_old:
        return with_urls(p, eps, spec.endpoint)
    # 3. Drain the old default, then 4. stop its replicas and delete it.
    left = drain(gw, spec.endpoint, old)
    if left:
        logger.warning("%d request(s) still outstanding on %s/%s after the drain timeout", left, spec.endpoint, old)
    eps.set_status(spec.endpoint, "DELETE IN PROGRESS", old)
    teardown(home, gw, spec.endpoint, next(s for s in eps.get(spec.endpoint)["stages"] if s["name"] == old), eps)
    eps.delete_stage(spec.endpoint, old, replaced=True)
    sync_http_route(p, eps, spec.endpoint)
    logger.info("deleted the old default stage %s/%s", spec.endpoint, old)
    return with_urls(p, eps, spec.endpoint)
