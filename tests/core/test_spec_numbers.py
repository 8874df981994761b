"""Numbers a spec holds can be stored and read back: an integer past 64 bits or a float that is not
finite is refused with the field named, wherever it sits (a field, a hyperparameter, a nested spec, a
Run form's pair), before anything is made with it (issue 52: one such integer broke Prefect's run
listings until the run was deleted by hand)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlyard.core.specs import TrainingSpec, TuningSpec

BASE = {"name": "n", "experiment": "e", "source_uri": "/tmp", "entry_point": "main.py"}


@pytest.mark.parametrize("given, field", [
    ({"max_run_time_seconds": 10**20}, "max_run_time_seconds"),
    ({"max_run_time_seconds": -(10**20)}, "max_run_time_seconds"),
    ({"hyperparameters": {"lr": 10**20}}, "hyperparameters.lr"),
    ({"hyperparameters": {"lr": float("inf")}}, "hyperparameters.lr"),
    ({"hyperparameters": {"lr": float("nan")}}, "hyperparameters.lr"),
    ({"hyperparameters": {"lr": 1e300}}, "hyperparameters.lr"),  # Prefect's check cannot tell it from 10**300
    ({"hyperparameters": [{"key": "lr", "value": "1e400"}]}, "hyperparameters.lr"),  # the Run form's pair
    ({"hyperparameters": [{"key": "n", "value": "99999999999999999999"}]}, "hyperparameters.n"),
])
def test_a_number_that_cannot_be_stored_is_refused_with_its_field(given, field):
    with pytest.raises(ValidationError) as refused:
        TrainingSpec.model_validate({**BASE, **given})
    assert field in str(refused.value), str(refused.value)


def test_numbers_that_fit_pass_at_the_limits():
    spec = TrainingSpec.model_validate({**BASE, "max_run_time_seconds": 2**63 - 1,
                                        "hyperparameters": {"a": -(2**63), "b": 9.2e18, "c": "1e400", "d": True}})
    assert spec.max_run_time_seconds == 2**63 - 1 and spec.hyperparameters["c"] == "1e400"


def test_a_nested_spec_names_its_own_field():
    with pytest.raises(ValidationError) as refused:
        TuningSpec.model_validate({"name": "t", "experiment": "e", "training": {**BASE, "hyperparameters": {"x": 2**64}},
                                   "objective": {"metric": {"name": "loss"}, "direction": "minimize"},
                                   "hyperparameters": [{"name": "lr", "type": "double", "min": 0.1, "max": 1}]})
    assert "hyperparameters.x" in str(refused.value)
