"""Start a stopped stage again (a server's start).

1. Check that the stage is STOPPED.
2. Deploy it: replicas, health, routing.
"""

from __future__ import annotations

from prefect import flow

from mlyard.core.errors import Protected
from mlyard.core.specs.endpoint import PromotionSpec
from mlyard.flows.endpoint import (
    EndpointResult,
    deploy_stage,
    with_urls,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks.orchestration import run_name


@flow(name="start-endpoint-stage", flow_run_name=run_name("start-endpoint-stage"),
      description="Start a stopped stage again: replicas, health, routing (VRidge's server start).")
def start_stage(spec: PromotionSpec) -> EndpointResult:
    p = Platform()
    eps = Endpoints(p.catalog)
    st = next((s for s in eps.get(spec.endpoint)["stages"] if s["name"] == spec.stage), None)
    if st is None or st["status"] != "STOPPED":
        raise Protected(f"stage {spec.endpoint}/{spec.stage} is {st['status'] if st else 'missing'}; only a STOPPED "
                        "stage is started")
    deploy_stage(p, eps, spec.endpoint, spec.stage, creating=False)
    return with_urls(p, eps, spec.endpoint)
