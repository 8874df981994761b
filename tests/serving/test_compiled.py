"""scikit-learn models compiled to ONNX: they agree with the estimator or are not used, a model that
does not convert is served by scikit-learn with the reason, and `mlyard serve` runs a compiled model
in a process that never imports scikit-learn (compiled on the first start, cached for the next)."""

from __future__ import annotations

import numpy as np
import pytest
from serving_http import MLYARD, call, free_port, serve, start, stop

from mlyard.tasks import compiled

# named, so MLflow does not infer them (a subprocess of several CPU-seconds per saved model)
REQ = ["scikit-learn"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLYARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _models():
    import pandas as pd
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    xi, yi = load_iris(return_X_y=True)
    xb, yb = load_breast_cancer(return_X_y=True)
    xd, yd = load_diabetes(return_X_y=True)
    named = pd.DataFrame(xi, columns=["sl", "sw", "pl", "pw"])
    from sklearn.datasets import load_digits

    xg, yg = load_digits(return_X_y=True)
    scaler = StandardScaler().fit(xg)
    sgd = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01, alpha=1e-4, random_state=0)
    for _ in range(3):  # as examples/sklearn_digits trains it, epoch by epoch
        sgd.partial_fit(scaler.transform(xg), yg, classes=np.unique(yg))
    return [
        ("lr", LogisticRegression(max_iter=500).fit(xi, yi), xi),
        ("rf", RandomForestClassifier(n_estimators=30, random_state=0).fit(xb, yb), xb),
        ("tree-strings", DecisionTreeClassifier(random_state=0).fit(xi, np.array(["a", "b", "c"])[yi]), xi),
        ("gbr", GradientBoostingRegressor(n_estimators=20, random_state=0).fit(xd, yd), xd),
        ("pipeline", make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(xb, yb), xb),
        ("named", LogisticRegression(max_iter=500).fit(named, yi), named),
        # every linear classifier it accepts agrees, far from the data too (the probes): the demo's own model
        ("demo-sgd", make_pipeline(scaler, sgd), xg),
        ("linear-svc", LinearSVC().fit(xi, yi), xi),
        ("ridge", RidgeClassifier().fit(xi, yi), xi),
    ]


@pytest.mark.parametrize("name", ["lr", "rf", "tree-strings", "gbr", "pipeline", "named", "demo-sgd", "linear-svc",
                                  "ridge"])
def test_a_compiled_model_agrees_with_its_estimator(cache, name):
    import joblib

    est, x = next((e, x) for n, e, x in _models() if n == name)
    path = cache / f"{name}.joblib"
    joblib.dump(est, path)
    onnx_est, why = compiled.compile_estimator(est, path)
    assert onnx_est is not None, why
    assert np.array_equal(onnx_est.predict(x), est.predict(x)) or np.allclose(onnx_est.predict(x), est.predict(x),
                                                                             rtol=1e-6)
    if hasattr(est, "predict_proba"):
        assert np.abs(onnx_est.predict_proba(x) - est.predict_proba(x)).max() <= 1e-6
        assert list(onnx_est.classes_) == list(est.classes_)
    again = compiled.cached(path)  # the next start loads it from the cache
    assert again is not None and np.array_equal(again.predict(x), onnx_est.predict(x))
    elsewhere = cache / "copy" / path.name  # the same bytes elsewhere (a replica's download): the same entry
    elsewhere.parent.mkdir(exist_ok=True)
    elsewhere.write_bytes(path.read_bytes())
    assert compiled.cached(elsewhere) is not None
    path.write_bytes(path.read_bytes() + b"\0")  # changed contents are a new key: compiled again
    assert compiled.cached(path) is None


class Odd:
    """An estimator skl2onnx knows nothing of."""

    n_features_in_ = 2
    classes_ = np.array([0, 1])

    def predict(self, x):
        return (np.asarray(x)[:, 0] > 0).astype(int)

    def predict_proba(self, x):
        p = (np.asarray(x)[:, :1] > 0).astype(float)
        return np.hstack([1 - p, p])


def test_a_model_that_does_not_convert_is_served_by_scikit_learn_with_the_reason(cache):
    (cache / "odd.joblib").write_bytes(b"stands for the model's file")
    onnx_est, why = compiled.compile_estimator(Odd(), cache / "odd.joblib")
    assert onnx_est is None and "cannot convert" in why


def test_mlyard_serve_compiles_once_and_then_starts_without_scikit_learn(cache):
    import mlflow.sklearn

    est, x = next((e, x) for n, e, x in _models() if n == "rf")
    path = cache / "bc_rf"
    mlflow.sklearn.save_model(est, path, skops_trusted_types=["sklearn.tree._tree.Tree"], pip_requirements=REQ)
    env = {"MLYARD_CACHE_DIR": str(cache / "cache")}
    for note in ("runtime: onnxruntime (compiled now, labels equal", "runtime: onnxruntime (cached)"):
        port = free_port()
        proc, printed = start([MLYARD, "serve", str(path), "--port", str(port), "--name", "bc"], env=env)
        url = f"http://127.0.0.1:{port}"
        assert note in printed, printed
        try:
            maps = open(f"/proc/{proc.pid}/maps").read()
            assert "/sklearn/" not in maps and "/scipy/" not in maps  # a lean process: no scikit-learn, no SciPy
            status, body = call(f"{url}/v1/models/bc:predict", {"instances": x[:50].tolist(),
                                                               "parameters": {"probabilities": True}})
            assert status == 200
            assert np.abs(np.array(body["predictions"]) - est.predict_proba(x[:50])).max() <= 1e-6
        finally:
            stop(proc)
    proc, url = serve(path, "bc", "--no-compile", env=env)
    try:
        assert "/sklearn/" in open(f"/proc/{proc.pid}/maps").read()
        assert call(f"{url}/v1/models/bc:predict", {"instances": x[:5].tolist()})[1]["predictions"] == \
            est.predict(x[:5]).tolist()
    finally:
        stop(proc)
