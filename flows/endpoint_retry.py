"""Retry a stage: clear its errors and deploy or route it again.

1. Find the stage.
2. An ACTIVE stage is routed again; a failed one is deployed anew; any other is refused.
"""

from __future__ import annotations

from prefect import flow

from mlyard.core.connection import gateway_url
from mlyard.core.errors import Protected
from mlyard.core.specs.endpoint import PromotionSpec
from mlyard.flows.endpoint import (
    EndpointResult,
    deploy_stage,
    with_urls,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks.endpoints import (
    RoutingFailed,
    route,
    stage_keys,
)
from mlyard.tasks.orchestration import run_name


@flow(name="retry-endpoint-stage", flow_run_name=run_name("retry-endpoint-stage"),
      description="Clear a stage's errors and try again: a failed stage is deployed anew; an ACTIVE stage is "
                  "routed again (the console's stage deploy).")
def retry_stage(spec: PromotionSpec) -> EndpointResult:
    p = Platform()
    eps = Endpoints(p.catalog)
    view = eps.get(spec.endpoint)
    st = next((s for s in view["stages"] if s["name"] == spec.stage), None)
    if st is None:
        from mlyard.core.errors import NotFound

        raise NotFound(f"{spec.endpoint}/{spec.stage}")
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    if st["status"] == "ACTIVE":
        keys = stage_keys(home, spec.endpoint, spec.stage, view)
        try:
            route(home, gw, spec.endpoint, spec.stage, keys)
            eps.set_status(spec.endpoint, "ACTIVE", spec.stage, gateway_status="ACTIVE")
        except RoutingFailed as exc:
            eps.set_status(spec.endpoint, "ACTIVE", spec.stage, reason=str(exc)[:2000], gateway_status="STAGE DEPLOY FAIL")
            raise
    elif st["status"] in ("CREATE FAILED", "DEPLOY FAILED", "UPDATE FAILED"):
        deploy_stage(p, eps, spec.endpoint, spec.stage, creating=view["status"] == "CREATE FAILED")
    else:
        raise Protected(f"stage {spec.endpoint}/{spec.stage} is {st['status']}; only a failed or ACTIVE stage is retried")
    return with_urls(p, eps, spec.endpoint)
