"""Give a stage a share of its endpoint's default traffic, or mirror a share to it (set-endpoint-traffic).

1. Record the share in the catalog: the rules are checked there (an ACTIVE stage other than the
   default, serving a model of the default stage; the weights add up to at most 99) and the serving
   history gets the new shares.
2. The gateway routes it now (every other gateway replica on its next read, within a second).
3. On a cluster that routes with the Gateway API (`MLYARD_HTTP_ROUTE_GATEWAY`), the endpoint's HTTPRoute
   is applied with the same weights.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from mlyard.core.connection import gateway_url
from mlyard.core.names import FLOW_SET_TRAFFIC
from mlyard.core.specs.promotion import TrafficSpec
from mlyard.flows.endpoint import EndpointResult, sync_http_route, with_urls
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.registry.traffic import Traffic
from mlyard.tasks.endpoints import gateway
from mlyard.tasks.orchestration import run_name


@flow(name=FLOW_SET_TRAFFIC, flow_run_name=run_name(FLOW_SET_TRAFFIC),
      description="Give a stage a weight (a share of the endpoint's default traffic it answers) or a shadow share "
                  "(mirrored to it, compared, never answered).")
def set_traffic(spec: TrafficSpec) -> EndpointResult:
    p = Platform()
    # 1. Record the share (the rules are checked there).
    shares = Traffic(p.catalog).set_share(spec.endpoint, spec.stage, spec.weight, spec.shadow, spec.note)
    # 2. The gateway routes it now.
    gateway(gateway_url(p.settings), "/mlyard/reload", "POST")
    logger = get_run_logger()
    logger.info("%s: %s", spec.endpoint, ", ".join(f"{k} {v}%" for k, v in shares.items()))
    eps = Endpoints(p.catalog)
    # 3. The cluster's own routing, when it has one.
    sync_http_route(p, eps, spec.endpoint)
    return with_urls(p, eps, spec.endpoint)
