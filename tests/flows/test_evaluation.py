"""The evaluate flow on the real stack: metrics equal scikit-learn's on the same predictions, pictures
and report in MLflow, comparison, deletion, and the seeds' limits (50 classes, 20 GB) refused up front."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from mlyard.core.errors import SpecError
from mlyard.core.specs import EvaluationSpec, load_spec


def _jsonl(path: Path, X, y) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "features": x.tolist(), "label": int(t) if float(t).is_integer() else float(t)})
                            + "\n" for i, (x, t) in enumerate(zip(X, y))))
    return path


def _spec(models, tmp_path, **kw) -> EvaluationSpec:
    data = {"name": "eval", "model": str(models["classifier"]), "task": "classification", "input_format": "jsonl",
            "label_field": "label", "id_field": "id", "output_uri": str(tmp_path / "out"), "batch_size": 64, **kw}
    return EvaluationSpec(**data)


def test_classification_metrics_equal_sklearn_and_pictures_reach_mlflow(platform, models, tmp_path):
    import mlflow.sklearn

    from mlyard import evaluations
    from mlyard.flows.evaluation import evaluate
    from mlyard.runs import BATCH, EVALUATION, get_run

    X, y = models["X"][:300], models["y"][:300]
    path = _jsonl(tmp_path / "labelled.jsonl", X, y)
    result = evaluate(_spec(models, tmp_path, input_uri=str(path)))

    sk = mlflow.sklearn.load_model(str(models["classifier"]))
    pred, proba = sk.predict(X), sk.predict_proba(X)
    expected = {"accuracy": skm.accuracy_score(y, pred), "f1": skm.f1_score(y, pred, average="macro"),
                "precision": skm.precision_score(y, pred, average="macro"),
                "recall": skm.recall_score(y, pred, average="macro"), "log_loss": skm.log_loss(y, proba),
                "roc_auc": skm.roc_auc_score(y, proba, multi_class="ovr"),
                "pr_auc": skm.average_precision_score(np.eye(3)[y], proba, average="macro")}
    assert result.rows == 300 and result.skipped_rows == 0 and result.not_applicable == {}
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-9), name

    run = platform.tracking.get_run(result.run_id)
    assert run.metrics["accuracy"] == pytest.approx(expected["accuracy"])
    files = {a.path for a in platform.tracking.client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/roc_curve.png", "evaluation/pr_curve.png",
            "evaluation/precision_recall_by_threshold.png", "evaluation/evaluation.json"} <= files
    doc = evaluations.report(platform.tracking, result.evaluation_id)
    assert doc["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist() and doc["classes"] == ["0", "1", "2"]
    assert get_run(EVALUATION, result.evaluation_id).status == "COMPLETE"
    from prefect.client.orchestration import get_client

    from mlyard.core.names import STARTED_LABEL
    from mlyard.runs import started_in

    with get_client(sync_client=True) as client:  # RUNNING is derived from the batch subflow having started
        fr = client.read_flow_run(result.evaluation_id)
        for step in (EVALUATION.marker, EVALUATION.closing):
            assert fr.labels.get(STARTED_LABEL + step) is True, fr.labels  # set as the step started
            assert started_in(client, step, [fr]) == {result.evaluation_id}
            # a run without the label (made before it, or its label failed): found from its task runs
            assert started_in(client, step, [fr.model_copy(update={"labels": {}})]) == {result.evaluation_id}
    batch = get_run(BATCH, result.batch_id)
    assert batch.status == "COMPLETE" and batch.parent_id == result.evaluation_id


def test_regression_metrics_equal_sklearn_and_rmsle_is_not_applicable_with_negatives(platform, models, tmp_path):
    from mlyard.flows.evaluation import evaluate

    X = models["X"][:200]
    y = 3 * X[:, 0] - X[:, 2] + 10 + np.random.default_rng(1).normal(scale=0.3, size=200)
    path = tmp_path / "labelled.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "c", "d", "target"])
        w.writerows([[*x, t] for x, t in zip(X, y)])
    result = evaluate(_spec(models, tmp_path, model=str(models["regressor"]), task="regression", input_format="csv",
                            label_field="target", id_field=None, input_uri=str(path)))
    pred = 3 * X[:, 0] - X[:, 2] + 10
    assert result.metrics["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert result.metrics["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert result.metrics["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert result.metrics["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    if (y < 0).any() or (pred < 0).any():
        assert "negative" in result.not_applicable["rmsle"]
    else:
        assert result.metrics["rmsle"] == pytest.approx(np.sqrt(skm.mean_squared_log_error(y, pred)))


def test_compare_and_delete(platform, models, tmp_path):
    from mlyard import evaluations
    from mlyard.core.errors import EvaluationNotFound
    from mlyard.flows.evaluation import evaluate
    from mlyard.runs import EVALUATION, get_run

    path = _jsonl(tmp_path / "labelled.jsonl", models["X"][:120], models["y"][:120])
    a = evaluate(_spec(models, tmp_path, name="a", input_uri=str(path), output_uri=str(tmp_path / "oa")))
    b = evaluate(_spec(models, tmp_path, name="b", input_uri=str(path), output_uri=str(tmp_path / "ob"),
                       model=str(models["slow"]), class_names=None))
    assert "no class probabilities" in b.not_applicable["roc_auc"]  # a pyfunc without predict_proba
    table, picture, run_id = evaluations.compare(platform.tracking, [a.evaluation_id, b.evaluation_id], tmp_path / "cmp")
    rows = {r["metric"]: r for r in table}
    labels = [k for k in table[0] if k != "metric"]
    assert rows["accuracy"][labels[0]] == pytest.approx(a.metrics["accuracy"])
    assert rows["roc_auc"][labels[1]] == "n/a"
    assert picture.exists() and picture.stat().st_size > 10_000
    assert {x.path for x in platform.tracking.client.list_artifacts(run_id, "comparison")}

    evaluations.delete(platform.tracking, b.evaluation_id)
    with pytest.raises(EvaluationNotFound):
        get_run(EVALUATION, b.evaluation_id)
    assert platform.tracking.get_run(b.run_id).lifecycle_stage == "deleted"
    assert (tmp_path / "ob" / "labelled.jsonl.predictions.jsonl").exists()  # the user's data stays


def test_limits_are_refused_before_anything_starts(platform, models, tmp_path):
    from mlyard.flows.evaluation import evaluate

    with pytest.raises(SpecError, match="at most 50"):
        load_spec(EvaluationSpec, {**_spec(models, tmp_path, input_uri="x.jsonl").model_dump(),
                                   "class_names": [f"c{i}" for i in range(51)]})

    path = _jsonl(tmp_path / "labelled.jsonl", models["X"][:20], models["y"][:20])
    state = evaluate(_spec(models, tmp_path, model=str(models["many"]), input_uri=str(path)), return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, SpecError) and "at most 50 classes; it has 51" in str(exc)
    assert not (tmp_path / "out").exists()

    big = tmp_path / "big" / "huge.jsonl"
    big.parent.mkdir()
    with open(big, "wb") as fh:  # sparse: 21 GB on paper, nothing on disk
        fh.truncate(21 * 1024**3)
    state = evaluate(_spec(models, tmp_path, input_uri=str(big.parent)), return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, SpecError) and exc.field == "input_uri" and "at most 20 GB" in str(exc)
    assert not (tmp_path / "out").exists()

    state = evaluate(_spec(models, tmp_path, input_uri=str(path), input_format="csv"), return_state=True)
    assert ".csv files" in str(state.result(raise_on_failure=False))
