"""The autoscaling rule engine: Backend.AI's comparators, step sizes, bounds and cooldowns."""

import pytest

from mlyard.core.errors import SpecError
from mlyard.core.specs import load_spec
from mlyard.core.specs.endpoint import AutoscalingRule
from mlyard.serving.autoscale import decide

UP = AutoscalingRule(type="scale_up", metric_name="requests_per_second", comparator="GREATER_THAN", threshold=100,
                     step_size=2, min_replicas=1, max_replicas=5, cooldown_seconds=60)
DOWN = AutoscalingRule(type="scale_down", metric_name="requests_per_second", comparator="LESS_THAN_OR_EQUAL",
                       threshold=10, step_size=-1, min_replicas=1, max_replicas=5, cooldown_seconds=120)


def m(rps: float) -> dict:
    return {"inference_framework": {"requests_per_second": rps}}


def test_rules_fire_on_their_comparison_within_bounds_and_cooldown():
    assert decide([UP, DOWN], 1, m(150), 0, {}).replicas == 3
    assert decide([UP, DOWN], 1, m(100), 0, {}).replicas == 1  # GREATER_THAN: equal does not fire
    assert decide([UP, DOWN], 3, m(10), 0, {}).replicas == 2  # LESS_THAN_OR_EQUAL: equal fires
    assert decide([UP, DOWN], 4, m(500), 0, {}).replicas == 4  # 4 + 2 would pass max_replicas: no fire
    assert decide([UP, DOWN], 1, m(0), 0, {}).replicas == 1  # 1 - 1 would pass min_replicas
    cooling = decide([UP, DOWN], 1, m(150), 100, {0: 70})
    assert cooling.replicas == 1 and "cooling down (30 s left)" in cooling.reason
    assert decide([UP, DOWN], 1, m(150), 130, {0: 70}).replicas == 3  # the cooldown is over
    assert decide([UP, DOWN], 3, {}, 0, {}).rule is None  # no metric yet: nothing fires
    assert decide([UP, DOWN], 3, {"kernel": {"requests_per_second": 500}}, 0, {}).rule is None  # another source


def test_the_stage_cap_bounds_every_rule():
    assert decide([UP, DOWN], 1, m(150), 0, {}, cap=3).replicas == 3
    assert decide([UP, DOWN], 2, m(150), 0, {}, cap=3).rule is None  # 2 + 2 would pass the stage's cap of 3


def test_a_stage_cap_below_its_pods_or_rules_is_refused():
    from mlyard.core.specs.endpoint import StageSpec

    with pytest.raises(SpecError, match=r"pods \(3\) exceeds max_replicas \(2\)"):
        load_spec(StageSpec, {"max_replicas": 2, "resources": [{"model": "m/1", "pods": 3}]})
    with pytest.raises(SpecError, match=r"autoscaling_rules\[0\].max_replicas \(5\) exceeds"):
        load_spec(StageSpec, {"max_replicas": 2, "resources": [{"model": "m/1"}],
                              "autoscaling_rules": [UP.model_dump()]})


def test_scale_up_rules_are_weighed_first():
    always_down = AutoscalingRule(type="scale_down", metric_name="requests_per_second", comparator="GREATER_THAN",
                                  threshold=0, step_size=-1, max_replicas=5)
    d = decide([always_down, UP], 2, m(150), 0, {})
    assert (d.replicas, d.rule) == (4, 1)


@pytest.mark.parametrize("data, words", [
    ({"type": "scale_up", "metric_name": "x", "comparator": "MORE", "threshold": 1, "step_size": 1}, "comparator"),
    ({"type": "scale_up", "metric_name": "x", "comparator": "LESS_THAN", "threshold": 1, "step_size": 1,
      "min_replicas": 5, "max_replicas": 2}, r"min_replicas \(5\) must not exceed"),
    ({"type": "scale_up", "metric_name": "x", "comparator": "LESS_THAN", "threshold": 1, "step_size": -1},
     "positive step_size"),
    ({"type": "scale_down", "metric_name": "x", "comparator": "LESS_THAN", "threshold": 1, "step_size": 0},
     "must not be 0"),
])
def test_a_bad_rule_is_refused_naming_the_problem(data, words):
    with pytest.raises(SpecError, match=words):
        load_spec(AutoscalingRule, data)
