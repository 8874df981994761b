"""Deploy an endpoint: a new endpoint with its default stage.

1. Check everything before any change (the name is free, every model version exists, the stage fits).
2. Record it (CREATE REQUESTED).
3. Deploy its stage: replicas, health, routing; rolled back on failure (flows/endpoint.py).
"""

from __future__ import annotations

from prefect import flow

from mlyard.core.names import FLOW_DEPLOY_ENDPOINT
from mlyard.core.specs.endpoint import EndpointSpec
from mlyard.flows.endpoint import (
    EndpointResult,
    deploy_stage,
    with_urls,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks.endpoints import check_stage
from mlyard.tasks.orchestration import run_name, run_project


@flow(name=FLOW_DEPLOY_ENDPOINT, flow_run_name=run_name(FLOW_DEPLOY_ENDPOINT),
      description="Create an endpoint with its default stage: replicas, health, routing; rolled back on failure.")
def deploy_endpoint(spec: EndpointSpec) -> EndpointResult:
    p = Platform()
    eps = Endpoints(p.catalog)
    # 1. Check.
    versions = check_stage(eps, p.models, spec.stage, "stage", new_endpoint=spec.name)
    # 2. Record, in the project of the run (the platform tagged it).
    eps.create(spec, versions, run_project())
    deploy_stage(p, eps, spec.name, spec.stage.name, creating=True)
    return with_urls(p, eps, spec.name)
