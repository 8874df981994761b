"""Stop a stage (a server's stop): its replicas end, its configuration stays.

1. Check that the stage is ACTIVE.
2. Take it out of routing and end its replicas (or its Kubernetes objects).
3. Mark it STOPPED (the endpoint too when every stage is), and tell the gateway.
"""

from __future__ import annotations

from prefect import flow

from mlyard.core.connection import gateway_url
from mlyard.core.errors import Protected
from mlyard.core.specs.endpoint import PromotionSpec
from mlyard.flows.endpoint import (
    EndpointResult,
    teardown,
    with_urls,
)
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks.endpoints import (
    RoutingFailed,
    gateway,
)
from mlyard.tasks.orchestration import run_name


@flow(name="stop-endpoint-stage", flow_run_name=run_name("stop-endpoint-stage"),
      description="Stop a stage's replicas and keep its configuration (VRidge's server stop).")
def stop_stage(spec: PromotionSpec) -> EndpointResult:
    p = Platform()
    eps = Endpoints(p.catalog)
    home, gw = p.settings.home_dir, gateway_url(p.settings)
    st = next((s for s in eps.get(spec.endpoint)["stages"] if s["name"] == spec.stage), None)
    if st is None or st["status"] != "ACTIVE":
        raise Protected(f"stage {spec.endpoint}/{spec.stage} is {st['status'] if st else 'missing'}; only an ACTIVE "
                        "stage is stopped")
    teardown(home, gw, spec.endpoint, st, eps)
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
    return with_urls(p, eps, spec.endpoint)
