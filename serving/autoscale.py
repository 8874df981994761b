"""Autoscaling decisions, pure: given the rules, the current replica count, the metrics and when each
rule last fired, what the replica count should be now and which rule says so. A loop in the stack
(or the endpoint flow on Kubernetes) reads the metrics and applies the decision; nothing here acts.

The semantics are Backend.AI's: a rule fires when its metric compares with its threshold; it moves the
count by its step size; it does not fire when the count would leave [min_replicas, max_replicas];
after firing it waits `cooldown_seconds`. A stage's own cap (max_replicas, AI Toolkit's
maximumInstanceCount) bounds every rule. Scale-up rules are weighed before scale-down rules (a
request refused costs more than a replica idle for a while), and the first rule that fires decides.
A metric that is missing (no replica reported it yet) never fires a rule.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from mlyard.core.specs.endpoint import AutoscalingRule

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "LESS_THAN": operator.lt, "LESS_THAN_OR_EQUAL": operator.le,
    "GREATER_THAN": operator.gt, "GREATER_THAN_OR_EQUAL": operator.ge,
}


@dataclass(frozen=True)
class Decision:
    replicas: int  # the count to run (the current one when no rule fired)
    rule: int | None  # the index of the rule that fired, or None
    reason: str


def decide(rules: Sequence[AutoscalingRule], replicas: int, metrics: Mapping[str, Mapping[str, float]],
           now: float, last_fired: Mapping[int, float], cap: int | None = None) -> Decision:
    """`metrics[source][name]` are averages over the replicas; `last_fired[i]` when rule i last fired;
    `cap` the stage's replica cap, if any."""
    order = sorted(range(len(rules)), key=lambda i: (rules[i].type != "scale_up", i))
    waiting = []
    for i in order:
        rule = rules[i]
        value = metrics.get(rule.metric_source, {}).get(rule.metric_name)
        if value is None or not _COMPARE[rule.comparator](value, rule.threshold):
            continue
        target = replicas + rule.step_size
        if not rule.min_replicas <= target <= min(rule.max_replicas, cap or rule.max_replicas):
            continue
        since = now - last_fired[i] if i in last_fired else None
        if since is not None and since < rule.cooldown_seconds:
            waiting.append(f"rule {i} cooling down ({rule.cooldown_seconds - since:.0f} s left)")
            continue
        return Decision(target, i, f"rule {i} ({rule.metric_source}.{rule.metric_name} {value:g} "
                                   f"{rule.comparator} {rule.threshold:g}): {replicas} -> {target} replicas")
    return Decision(replicas, None, "; ".join(waiting) or "no rule fired")
