"""Safe promotion from Python (and the CLI's `mlyard endpoints canary|policy|rollout`): traffic shares
between stages and progressive promotions behind gates. Every change of traffic is a flow run
(set-endpoint-traffic, promote-progressively, control-promotion); reads come from the catalog.

    import mlyard.promotion as promotion

    promotion.canary("iris", "challenger", weight=10)     # 10 % of the default traffic answered there
    promotion.canary("iris", "challenger", shadow=20)     # 20 % mirrored there, compared, never answered
    promotion.set_policy("iris", "policy.yaml")           # steps, step_seconds, gates, on_failure
    promotion.rollout("iris", "challenger", submit=True)  # 5 -> 25 -> 50 -> 100, rolled back on a failed gate
    promotion.pause("iris"); promotion.resume("iris"); promotion.abort("iris")
    promotion.show("iris")                                 # the promotions, each gate's judgement

A bad spec or request (no such stage, a stage that is not ACTIVE, weights over 99, no policy) is
refused in one line before any flow run starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlyard.api import load as _spec
from mlyard.core.errors import SpecError
from mlyard.core.names import FLOW_CONTROL_PROMOTION, FLOW_ROLLOUT, FLOW_SET_TRAFFIC
from mlyard.core.specs.promotion import PolicySpec, PromotionControlSpec, RolloutSpec, TrafficSpec
from mlyard.endpoints import act, connect_platform, endpoint_registry, endpoint_view
from mlyard.warm_api import member_api


def _candidate(endpoint: str, stage: str) -> dict[str, Any]:
    """The stage, checked as the flows would check it: an ACTIVE stage other than the default."""
    view = endpoint_view(endpoint)
    st = next((s for s in view["stages"] if s["name"] == stage), None)
    if st is None:
        raise SpecError("stage", stage, f"a stage of {endpoint}: {', '.join(s['name'] for s in view['stages'])}")
    if st["default"]:
        raise SpecError("stage", stage, f"a stage other than the default ({stage} is the default stage of {endpoint})")
    if st["status"] != "ACTIVE":
        raise SpecError("stage", stage, f"an ACTIVE stage ({stage} is {st['status']})")
    return st


def canary(endpoint: str, stage: str, *, weight: int | None = None, shadow: int | None = None, note: str = "",
           submit: bool = False) -> dict[str, Any]:
    """Give `stage` `weight` % of the endpoint's default traffic, or mirror `shadow` % to it (0 stops
    either); the endpoint after it (set-endpoint-traffic)."""
    spec = _spec(TrafficSpec, {"endpoint": endpoint, "stage": stage, "weight": weight, "shadow": shadow, "note": note})
    if spec.weight or spec.shadow:
        _candidate(endpoint, stage)
    if member_api() is None:  # a member's change is checked by the platform and its flow (mlyard/member_runs.py)
        from mlyard.registry.traffic import Traffic

        Traffic(connect_platform().catalog).check_share(endpoint, stage, spec.weight, spec.shadow)  # every rule, first
    return act(FLOW_SET_TRAFFIC, "mlyard.flows.endpoint_traffic:set_traffic", spec, submit)


def set_policy(endpoint: str, policy: PolicySpec | dict | str | Path | None, *,
               sets: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Keep `policy` (a YAML file, a mapping or a PolicySpec; None removes it) as the endpoint's
    promotion policy; the policy as kept."""
    spec = None if policy is None else _spec(PolicySpec, policy, sets)
    from mlyard.registry.traffic import Traffic

    Traffic(connect_platform().catalog).set_policy(endpoint, spec)
    return spec.model_dump(mode="json") if spec else None


def policy(endpoint: str) -> dict[str, Any] | None:
    from mlyard.registry.traffic import Traffic

    kept = Traffic(connect_platform().catalog).policy(endpoint)
    return kept.model_dump(mode="json") if kept else None


def rollout(endpoint: str, stage: str, *, policy: PolicySpec | dict | str | Path | None = None,
            submit: bool = False) -> dict[str, Any]:
    """Promote `stage` step by step behind the policy's gates (promote-progressively): the promotion and
    the endpoint when it ends, or the queued run with `submit`."""
    from mlyard.registry.traffic import Traffic

    spec = RolloutSpec(endpoint=endpoint, stage=stage, policy=None if policy is None else _spec(PolicySpec, policy))
    _candidate(endpoint, stage)
    if member_api() is not None:  # a member's: the platform and its flow check the policy and what runs already
        return act(FLOW_ROLLOUT, "mlyard.flows.endpoint_rollout:promote_progressively", spec, submit)
    traffic = Traffic(connect_platform().catalog)
    kept = spec.policy or traffic.policy(endpoint)
    if kept is None:
        raise SpecError("policy", None, f"a promotion policy: `mlyard endpoints policy {endpoint} -f policy.yaml`, "
                        "or --policy with the rollout")
    traffic.check_start(endpoint, stage, kept)  # one promotion at a time; room for its steps
    return act(FLOW_ROLLOUT, "mlyard.flows.endpoint_rollout:promote_progressively", spec, submit)


def _control(endpoint: str, action: str) -> dict[str, Any]:
    from mlyard.registry.traffic import Traffic

    if member_api() is None and Traffic(connect_platform().catalog).active(endpoint) is None:
        raise SpecError("endpoint", endpoint, "an endpoint with a promotion in progress (`mlyard endpoints rollout "
                        f"show {endpoint}`)")
    return act(FLOW_CONTROL_PROMOTION, "mlyard.flows.endpoint_rollout:control_promotion",
                PromotionControlSpec(endpoint=endpoint, action=action), False)


def pause(endpoint: str) -> dict[str, Any]:
    """Hold the promotion in progress at its current weight."""
    return _control(endpoint, "pause")


def resume(endpoint: str) -> dict[str, Any]:
    """Go on with the promotion in progress (a new run at its step if its run ended)."""
    return _control(endpoint, "resume")


def abort(endpoint: str) -> dict[str, Any]:
    """End the promotion in progress: the candidate's weight goes to 0."""
    return _control(endpoint, "abort")


def show(endpoint: str) -> dict[str, Any]:
    """The endpoint's promotions (newest last), the one in progress, its policy and its stages' shares."""
    from mlyard.registry.traffic import Traffic
    from mlyard.serving.traffic import merged, summary

    p = connect_platform()
    traffic, view = Traffic(p.catalog), endpoint_registry(p).get(endpoint)
    kept = traffic.policy(endpoint)
    # the gateway's running totals of each stage since traffic was first shared (every gateway replica's)
    return {"endpoint": endpoint, "active": traffic.active(endpoint), "promotions": traffic.promotions(endpoint),
            "policy": kept.model_dump(mode="json") if kept else None,
            "shares": {st["name"]: {"weight": st["weight"], "shadow": st["shadow"], "default": st["default"],
                                    "reason": st["reason"],
                                    "live": summary(merged(traffic.read_counts(endpoint, st["name"])))}
                       for st in view["stages"]}}
