"""Delete a stage, or an endpoint with its default stage.

1. Check the rules first: nothing stops if the deletion is refused.
2. Take each stage out of routing and end its replicas.
3. Delete the records; the serving history stays.
"""

from __future__ import annotations

from prefect import flow

from mlyard.core.connection import gateway_url
from mlyard.core.names import FLOW_DELETE_ENDPOINT
from mlyard.core.specs.endpoint import DeletionSpec
from mlyard.flows.endpoint import (
    DeletionResult,
    sync_http_route,
    teardown,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks.orchestration import run_name


@flow(name=FLOW_DELETE_ENDPOINT, flow_run_name=run_name(FLOW_DELETE_ENDPOINT),
      description="Delete a stage, or an endpoint with its default stage (refused while other stages exist).")
def delete_endpoint(spec: DeletionSpec) -> DeletionResult:
    p = Platform()
    eps = Endpoints(p.catalog)
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    # 1. The rules first: nothing stops if the deletion is refused.
    eps.check_delete(spec.endpoint, spec.stage)
    stages = {s["name"]: s for s in eps.get(spec.endpoint)["stages"]}
    if spec.stage is not None:
        eps.set_status(spec.endpoint, "DELETE IN PROGRESS", spec.stage)
        sync_http_route(p, eps, spec.endpoint, without=spec.stage)  # the cluster's Gateway first, if it routes
        teardown(home, gw, spec.endpoint, stages[spec.stage], eps)
        eps.delete_stage(spec.endpoint, spec.stage)
        return DeletionResult(deleted=f"{spec.endpoint}/{spec.stage}")
    eps.set_status(spec.endpoint, "DELETE IN PROGRESS")
    sync_http_route(p, eps, spec.endpoint, deleted=True)
    for st in stages.values():
        teardown(home, gw, spec.endpoint, st, eps)
    eps.delete(spec.endpoint)
    return DeletionResult(deleted=spec.endpoint)
