"""The one model loader: batch inference, evaluation and (next) serving load an MLflow model through it.

`load_model(path)` gives a `Model` with `predict(x, with_proba)` -> (predictions, probabilities or None).

A scikit-learn model (flavors sklearn and python_function only) is read the way MLflow's sklearn
flavour reads it (skops, pickle or cloudpickle, as its MLmodel says), without importing MLflow: a
fresh worker process is ready in a fraction of the time. skops builds its list of trusted types by
importing every scikit-learn module, and one of them imports torch when torch is installed (about
7 s on a busy 2-core machine); torch is hidden while skops is imported, as it is where torch is not
installed. Every other model goes through `mlflow.pyfunc.load_model`.
"""

from __future__ import annotations

import importlib.abc
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from mlyard.core.environment import flag

SKLEARN_LOADER = "mlflow.sklearn"
BATCH_THREADS = 0  # a compiled model in a batch: onnxruntime's own default, every core


class Model:
    """A model loaded once. `predict` gives (predictions, probabilities or None)."""

    def __init__(self, uri: str, compile: bool = True):
        self.uri = uri
        self.runtime = "python_function"
        raw = _compiled_or_estimator(Path(uri), compile, self) if "://" not in uri else None
        self.pyfunc: Any = None
        if raw is None:
            import mlflow.pyfunc

            self.pyfunc = mlflow.pyfunc.load_model(uri)
            try:
                raw = self.pyfunc.get_raw_model()
            except Exception:  # pyfunc flavours without a raw model
                raw = None
        self._raw: Any = raw
        self._proba: Any = getattr(raw, "predict_proba", None) if raw is not None else None
        classes = getattr(raw, "classes_", None) if self._proba is not None else None
        self._classes: Any = classes
        self.classes: list[str] | None = [str(c) for c in classes] if classes is not None else None

    @property
    def raw(self) -> Any:
        """The estimator itself (scikit-learn), or None for a model only MLflow's pyfunc can call."""
        return self._raw

    @property
    def has_proba(self) -> bool:
        return self._proba is not None and self._classes is not None

    def predict(self, x, with_proba: bool) -> tuple[list, Any]:
        import numpy as np

        both = getattr(self._raw, "predict_with_proba", None)  # a compiled classifier: labels as scikit-learn's
        if with_proba and both is not None:
            labels, proba = both(x)
            return labels.tolist(), proba
        if with_proba and self._proba is not None and self._classes is not None:
            proba = np.asarray(self._proba(x))
            return self._classes[proba.argmax(axis=1)].tolist(), proba
        predictor = self.pyfunc if self.pyfunc is not None else self._raw
        return _as_list(predictor.predict(x)), None


def load_model(uri: str, compile: bool = True) -> Model:
    """The model at `uri`; a scikit-learn one compiled to ONNX when it compiles and agrees (`compile`)."""
    return Model(uri, compile)


def prepare_for_serving(model_dir: Path) -> str | None:
    """Done once when a version is registered: a scikit-learn model (an MLflow model, or a folder of one
    .joblib file) compiled to ONNX and verified, into the cache every later load finds it in (the first
    `serve` of the version then imports neither scikit-learn nor SciPy); how it will run, or None."""
    from mlyard.tasks import compiled

    if (model_dir / "MLmodel").is_file():
        if not compiled.is_sklearn_model(model_dir):
            return None
        runtime = Model(str(model_dir)).runtime
        return "onnxruntime (compiled at registration)" if runtime == "onnxruntime (compiled now)" else runtime
    found = sorted(model_dir.glob("*.joblib")) if model_dir.is_dir() else []
    if len(found) != 1:
        return None
    if compiled.cached(found[0]) is not None:
        return "onnxruntime (compiled before)"
    import joblib

    ready, why = compiled.compile_estimator(joblib.load(found[0]), found[0])
    return "onnxruntime (compiled at registration)" if ready is not None else f"scikit-learn (not compiled: {why})"


def local_framework(model: str) -> str | None:
    """"sklearn" for a local MLflow model directory that the scikit-learn path loads, else None."""
    if "://" in model:
        return None
    try:
        meta = yaml.safe_load((Path(model) / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return "sklearn" if "sklearn" in (meta.get("flavors") or {}) else None


def prepare_sklearn_loader() -> None:
    """Import skops (with scikit-learn and SciPy) now, in a process that will load a scikit-learn
    model after importing Prefect and MLflow. skops looks up each of SciPy's ~800 ufuncs by scanning
    every loaded module in import order; with SciPy loaded before the ~3,000 modules Prefect and MLflow
    bring, that scan takes about 0.3 s instead of 1.5 s. The batch and evaluation commands call it."""
    with _torch_hidden():
        import skops.io  # noqa: F401


def estimator_signature(model_dir: Path) -> dict[str, Any] | None:
    """A signature read off a scikit-learn estimator, for a model saved without one: named double
    columns when it was fitted on a DataFrame, else a float64 tensor of n_features_in_ columns; outputs
    are its classes' dtype (classifiers) or float64, as MLflow's schema JSON; None for any other model.
    Used at registration, where MLflow is loaded anyway."""
    try:
        est = _sklearn_estimator(model_dir)
    except Exception:  # a model that does not load says so where it is used, not at registration
        return None
    if est is None or not hasattr(est, "n_features_in_"):
        return None
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from mlyard.registry.models import signature_json

    names = getattr(est, "feature_names_in_", None)
    inputs = (Schema([ColSpec("double", str(n)) for n in names]) if names is not None else
              Schema([TensorSpec(np.dtype("float64"), (-1, int(est.n_features_in_)))]))
    classes = getattr(est, "classes_", None)
    outputs = Schema([TensorSpec(np.dtype(classes.dtype) if classes is not None else np.dtype("float64"), (-1,))])
    return {**signature_json(ModelSignature(inputs=inputs, outputs=outputs)), "source": "read off the scikit-learn estimator"}


def _compiled_or_estimator(path: Path, compile: bool, model: "Model") -> Any:
    """A local scikit-learn model as serving runs it (tasks/compiled.py): compiled to ONNX and verified
    against the estimator (from the cache, without importing scikit-learn, when it was compiled before,
    at registration for a registered version), else the estimator itself; None for other models."""
    from mlyard.tasks import compiled

    if compile and (path / "MLmodel").is_file():
        ready = compiled.cached(path, threads=BATCH_THREADS)
        if ready is not None:
            model.runtime = "onnxruntime (compiled before)"
            return ready
    raw = _sklearn_estimator(path)
    if raw is None or not compile:
        if raw is not None:
            model.runtime = "scikit-learn"
        return raw
    ready, why = compiled.compile_estimator(raw, path)
    if ready is not None:
        ready = compiled.cached(path, threads=BATCH_THREADS) or ready
    model.runtime = "onnxruntime (compiled now)" if ready is not None else f"scikit-learn (not compiled: {why})"
    return ready if ready is not None else raw


def _sklearn_estimator(path: Path):
    """The estimator of a local scikit-learn-only MLflow model, or None for anything else."""
    try:
        meta = yaml.safe_load((path / "MLmodel").read_text())
    except (OSError, yaml.YAMLError):
        return None
    flavors = (meta or {}).get("flavors") or {}
    conf = flavors.get("sklearn")
    pyfunc = flavors.get("python_function") or {}
    if conf is None or set(flavors) - {"sklearn", "python_function"} or pyfunc.get("loader_module") != SKLEARN_LOADER:
        return None
    file = path / conf.get("pickled_model", pyfunc.get("model_path", "model.pkl"))
    fmt = conf.get("serialization_format", "pickle")
    if not flag("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", default=True):
        return None  # MLflow refuses it then, with its own message
    if fmt == "skops":
        with _torch_hidden():
            import skops.io
        return skops.io.load(file, trusted=conf.get("skops_trusted_types"))
    if fmt == "cloudpickle":
        import cloudpickle

        with open(file, "rb") as fh:
            return cloudpickle.load(fh)
    if fmt == "pickle":
        import pickle

        with open(file, "rb") as fh:
            return pickle.load(fh)
    return None


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@contextmanager
def _torch_hidden() -> Iterator[None]:
    if "torch" in sys.modules or "skops.io" in sys.modules:
        yield
        return
    finder = _Hide()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def _as_list(pred) -> list:
    if hasattr(pred, "to_dict") and hasattr(pred, "columns"):  # DataFrame: one record per row
        cols = list(pred.columns)
        return pred[cols[0]].tolist() if len(cols) == 1 else pred.to_dict(orient="records")
    if hasattr(pred, "tolist"):
        return pred.tolist()
    return list(pred)
