"""Add a stage to an endpoint; it answers at its own URL until promoted.

1. Check the stage (its name is free, every model version exists, it fits).
2. Record it.
3. Deploy it: replicas, health, routing; rolled back on failure.
"""

from __future__ import annotations

from prefect import flow

from mlyard.core.names import FLOW_ADD_STAGE
from mlyard.core.specs.endpoint import StageChangeSpec
from mlyard.flows.endpoint import (
    EndpointResult,
    deploy_stage,
    with_urls,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks.endpoints import check_stage
from mlyard.tasks.orchestration import run_name


@flow(name=FLOW_ADD_STAGE, flow_run_name=run_name(FLOW_ADD_STAGE),
      description="Add a stage to an endpoint: replicas, health, routing at its own URL; rolled back on failure.")
def add_stage(spec: StageChangeSpec) -> EndpointResult:
    p = Platform()
    eps = Endpoints(p.catalog)
    versions = check_stage(eps, p.models, spec.stage, "stage", endpoint=spec.endpoint)
    eps.add_stage(spec.endpoint, spec.stage, versions)
    deploy_stage(p, eps, spec.endpoint, spec.stage.name, creating=False)
    return with_urls(p, eps, spec.endpoint)
