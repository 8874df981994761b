"""The monitoring component (infra/k8s/components/monitoring) as the values ask for it: its alert rules written
for the install's namespace and thresholds, its NetworkPolicies for Prometheus's namespace; and the scrape
credential's Secret, `mlyard-metrics`, derived from the internal credential (core/environment.metrics_token),
which `mlyard k8s apply` writes so that the ServiceMonitors hold a credential that reads metrics and nothing else.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from mlyard.core.errors import StackError
from mlyard.core.specs.cluster import ClusterValues

METRICS_SECRET = "mlyard-metrics"
RULES = "mlyard"  # the PrometheusRule
# each threshold as the component's file writes it, and the values' field that replaces it
THRESHOLDS = {"MlyardRunsWaitingTooLong": (r"> 1800$", lambda v: f"> {round(v.monitoring.waiting_minutes * 60)}"),
              "MlyardVolumeFilling": (r"< 0\.1$", lambda v: f"< {v.monitoring.volume_free_percent / 100:g}")}


def customize(objs: list[dict[str, Any]], values: ClusterValues) -> list[dict[str, Any]]:
    """`objs` with the component's rules and policies set from the values (the rest as they are)."""
    if not values.monitoring.enabled:
        return objs
    ns = values.namespace
    for obj in objs:
        if obj["kind"] == "PrometheusRule" and obj["metadata"]["name"] == RULES:
            for rule in (r for group in obj["spec"]["groups"] for r in group["rules"]):
                rule["expr"] = rule["expr"].replace('namespace="mlyard"', f'namespace="{ns}"')
                if rule.get("alert") in THRESHOLDS:
                    pattern, written = THRESHOLDS[rule["alert"]]
                    rule["expr"] = re.sub(pattern, written(values), rule["expr"].rstrip())
                for key, text in rule.get("annotations", {}).items():
                    rule["annotations"][key] = text.replace("-n mlyard ", f"-n {ns} ")
        if obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"].endswith("-metrics"):
            for source in (s for rule in obj["spec"]["ingress"] for s in rule["from"]):
                source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] = \
                    values.monitoring.prometheus_namespace
    return objs


def metrics_secret(dyn: Any, values: ClusterValues) -> dict[str, Any]:
    """The Secret the ServiceMonitors read: the scrape credential, derived from the settings Secret's internal
    credential (which Prometheus never sees)."""
    from kubernetes.dynamic.exceptions import NotFoundError

    from mlyard.core.environment import metrics_token

    name = values.secrets.settings
    try:
        secret = dyn.resources.get(api_version="v1", kind="Secret").get(name=name, namespace=values.namespace)
    except NotFoundError:
        raise StackError(f"Secret {name} not found in {values.namespace}: the scrape credential is derived from its "
                         "mlyard_internal_token") from None
    internal = (secret.data or {}).get("mlyard_internal_token")
    if not internal:
        raise StackError(f"Secret {name} has no mlyard_internal_token: the scrape credential is derived from it")
    token = metrics_token(base64.b64decode(internal).decode())
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": METRICS_SECRET, "namespace": values.namespace,
                         "labels": {"app.kubernetes.io/part-of": "mlyard", "app.kubernetes.io/component": "monitoring"}},
            "data": {"token": base64.b64encode(token.encode()).decode()}}
