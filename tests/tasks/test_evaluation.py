"""Evaluation metrics against scikit-learn on real fitted models, and by hand on tiny cases."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlyard.core.errors import SpecError
from mlyard.tasks.evaluation import MAX_CLASSES, classification, regression


def test_binary_matches_sklearn():
    X, y = load_breast_cancer(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(X, y)
    proba, pred = model.predict_proba(X), model.predict(X)
    r = classification(y, pred, proba, classes=["0", "1"])
    v = r.values()
    assert v["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert v["pr_auc"] == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    assert v["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert v["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert v["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert v["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert v["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert v["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert r.confusion_matrix == skm.confusion_matrix(y, pred).tolist()
    assert len(r.curves["by_threshold"]["threshold"]) == len(r.curves["by_threshold"]["precision"])


def test_multiclass_matches_sklearn():
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(X[:, :2], y)
    proba, pred = model.predict_proba(X[:, :2]), model.predict(X[:, :2])
    r = classification(y, pred, proba, classes=["0", "1", "2"])
    v = r.values()
    assert v["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert v["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert v["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert np.array(r.confusion_matrix).sum() == len(y)


def test_by_hand_and_not_applicable():
    r = classification(["a", "b", "a", "b"], ["a", "b", "b", "b"], classes=["a", "b"])
    assert r.values()["accuracy"] == 0.75 and r.values()["precision"] == pytest.approx(2 / 3)
    assert r.metrics["roc_auc"].reason == "the model gives no class probabilities (no predict_proba)"
    assert r.as_dict()["metrics"]["log_loss"]["not_applicable"]
    one = classification(["a", "a"], ["a", "a"], np.array([[0.9, 0.1], [0.8, 0.2]]), classes=["a", "b"])
    assert "single class" in one.metrics["roc_auc"].reason


def test_regression_matches_sklearn_and_rmsle_rules():
    X, y = load_diabetes(return_X_y=True)
    pred = LinearRegression().fit(X, y).predict(X)
    v = regression(y, pred).values()
    assert v["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert v["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert v["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert v["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    assert (pred >= 0).all() and v["rmsle"] == pytest.approx(np.sqrt(skm.mean_squared_log_error(y, pred)))
    neg = regression([1.0, -2.0, 3.0], [1.0, 2.0, 3.0])
    assert "negative" in neg.metrics["rmsle"].reason and neg.metrics["mae"].value == pytest.approx(4 / 3)
    zero = regression([0.0, 1.0], [0.5, 1.0])
    assert "contains 0" in zero.metrics["mape"].reason


def test_too_many_classes_and_bad_shapes_are_refused():
    labels = [str(i) for i in range(MAX_CLASSES + 1)]
    with pytest.raises(SpecError, match="at most 50 classes"):
        classification(labels, labels)
    with pytest.raises(SpecError, match="one column per class"):
        classification(["a", "b"], ["a", "b"], np.array([[1.0], [0.0]]), classes=["a", "b"])
    with pytest.raises(SpecError, match="ground-truth value"):
        classification(["a", "z"], ["a", "a"], classes=["a", "b"])


def test_each_metric_says_how_it_is_averaged_and_curves_carry_their_own_auc():
    import numpy as np
    import sklearn.metrics as skm

    from mlyard.tasks.evaluation import classification

    rng = np.random.default_rng(1)
    y = np.array([0, 1, 2] * 20)
    proba = rng.dirichlet([1, 1, 1], size=60)
    r = classification(y, proba.argmax(axis=1), proba, ["0", "1", "2"]).as_dict()
    assert r["metrics"]["f1"]["average"] == "macro over 3 classes"
    assert r["metrics"]["roc_auc"]["average"] == "one-vs-rest, macro over 3 classes"
    assert "average" not in r["metrics"]["accuracy"]
    onehot = np.eye(3)[y]
    assert r["curves"]["roc"]["auc"] == pytest.approx(skm.roc_auc_score(onehot, proba, average="micro"))
    assert r["curves"]["pr"]["auc"] == pytest.approx(skm.average_precision_score(onehot, proba, average="micro"))
    binary = classification([0, 1, 1, 0], [0, 1, 0, 0], np.array([[.8, .2], [.3, .7], [.6, .4], [.9, .1]]), ["0", "1"])
    assert binary.as_dict()["metrics"]["f1"]["average"] == "binary (positive class: 1)"
