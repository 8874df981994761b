import pytest

from mlyard.core.errors import AlreadyExists, ExperimentBusy, ExperimentNotFound
from mlyard.core.names import TAG_KIND, TAG_TRAINING_NAME
from mlyard.registry import Experiments


def test_experiment_lifecycle_and_running_work(tracking):
    ex = Experiments(tracking)
    ex.create("churn", "churn models")
    with pytest.raises(AlreadyExists):
        ex.create("churn")
    tracking.start_run("churn", "t1", {TAG_KIND: "training", TAG_TRAINING_NAME: "t1"})
    tracking.start_run("churn", "t0", {TAG_KIND: "training"})
    info = ex.get("churn")
    assert (info.trainings, info.running, info.description) == (2, 2, "churn models")
    with pytest.raises(ExperimentBusy, match="t1"):
        ex.delete("churn")
    for r in tracking.client.search_runs([info.id]):
        tracking.end_run(r.info.run_id, "FINISHED")
    with pytest.raises(ExperimentBusy, match="queued-one"):
        ex.delete("churn", other_running=["queued-one"])
    ex.delete("churn")
    with pytest.raises(ExperimentNotFound):
        ex.get("churn")
    assert "churn" not in [e.name for e in ex.list()]
    ex.create("churn")  # a deleted name can be used again
