"""Statuses as the seeds name them, derived from Prefect's state (pure: no server)."""

import pytest

from mlyard.runs import BATCH, EVALUATION, TRAINING, TUNING, status


@pytest.mark.parametrize("state, started, closing, expected", [
    (None, False, False, "CREATE REQUESTED"),
    ("SCHEDULED", False, False, "CREATE REQUESTED"),
    ("PENDING", False, False, "CREATE REQUESTED"),
    ("RUNNING", False, False, "CREATE IN PROGRESS"),
    ("RUNNING", True, False, "RUNNING"),
    ("RUNNING", True, True, "COMPLETE IN PROGRESS"),
    ("COMPLETED", True, True, "COMPLETE"),
    ("CANCELLING", True, False, "STOP IN PROGRESS"),
    ("CANCELLED", True, False, "STOPPED"),
    ("FAILED", False, False, "CREATE FAILED"),
    ("FAILED", True, False, "FAIL BATCH INFERENCE"),
    ("CRASHED", False, False, "FAIL BATCH INFERENCE"),
])
def test_batch_statuses(state, started, closing, expected):
    assert status(BATCH, state, started, closing) == expected


def test_each_kind_fails_with_its_own_status():
    assert status(TRAINING, "FAILED", True) == "FAIL TRAIN"
    assert status(EVALUATION, "FAILED", True) == "FAIL MODEL EVALUATION"
    assert status(EVALUATION, "FAILED", False) == "CREATE FAILED"


def test_a_tuning_runs_once_its_first_trial_started():
    assert status(TUNING, "RUNNING", False) == "CREATE IN PROGRESS"
    assert status(TUNING, "RUNNING", True) == "RUNNING"
    assert status(TUNING, "FAILED", True) == "FAIL HYPERPARAMETER TUNING"
