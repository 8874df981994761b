"""scikit-learn models compiled to ONNX and run by onnxruntime: a replica that serves a compiled model
imports neither scikit-learn nor SciPy, so it starts in a fraction of a second and in a fraction of
the memory, and a tree ensemble answers one row in microseconds instead of milliseconds.

A model is compiled once (skl2onnx: when it is registered, else the first time it is served or run
in a batch) and kept in a cache directory keyed by its files' contents, so every later start of that
model (a restart, one more replica, a batch worker) loads the ONNX file alone. A compiled model is used only when it agrees with the estimator on probe rows: the same labels,
and probabilities or regression values within 1e-6. Trees compare each feature as float32 (scikit-learn
casts its input), so their rows are rounded the same way before they reach onnxruntime. Probes are
random rows at several scales, and for trees rows made of the trees' own thresholds (every split's
boundary). A model that does not compile, or does not agree, is served by scikit-learn, as before;
`mlyard serve --no-compile` asks for that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mlyard.tasks import cache
from mlyard.tasks.cache import cache_dir

TOLERANCE = 1e-6
PROBE_ROWS = 512
FORMAT = 2  # bump when the cache's layout or the verification changes
NOT_THE_MODEL = frozenset({"registered_model_meta"})  # what MLflow adds to a registered version's download


def cache_root() -> Path:
    return cache_dir() / "compiled"


def key(model_path: Path) -> str:
    """A key over the model's contents (each file's name and bytes): the same model wherever it lies (the
    registration's copy, a replica's download, a batch's stage-in) finds one compiled entry; a changed
    model compiles again."""
    files = sorted(p for p in model_path.rglob("*") if p.is_file() and p.name not in NOT_THE_MODEL) \
        if model_path.is_dir() else [model_path]
    h = hashlib.sha256(f"{FORMAT}".encode())
    for f in files:
        h.update(f"|{f.relative_to(model_path) if model_path.is_dir() else f.name}|{f.stat().st_size}|".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


class OnnxEstimator:
    """What the model server uses of an estimator (predict, predict_proba, classes_, n_features_in_,
    feature_names_in_), answered by an onnxruntime session."""

    def __init__(self, folder: Path, meta: dict[str, Any], threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # serving: one request's rows are few, threads would spin for nothing (1); a batch's 1,000 rows
        # are many: every core (0, onnxruntime's default)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.cast32 = bool(meta["cast_float32"])
        self.single = meta.get("input_dtype") == "float32"
        self.n_features_in_ = int(meta["n_features"])
        if meta.get("feature_names") is not None:
            self.feature_names_in_ = np.array(meta["feature_names"], dtype=object)
        self.report = meta["verified"]
        if meta.get("linear"):
            self.coef_ = np.array(meta["linear"]["coef"])
            self.intercept_ = np.array(meta["linear"]["intercept"])

    def _x(self, x: Any) -> np.ndarray:
        if hasattr(x, "iloc"):  # a DataFrame of named columns, in the model's order
            names = getattr(self, "feature_names_in_", None)
            x = x[list(names)] if names is not None else x
            x = x.to_numpy()
        x = np.asarray(x, dtype=np.float64)
        if self.single:
            return x.astype(np.float32)
        if self.cast32:
            x = x.astype(np.float32).astype(np.float64)
        return x

    def predict(self, x: Any) -> np.ndarray:
        out = self.session.run(self.outputs[:1], {self.input: self._x(x)})[0]
        return out.reshape(-1) if out.ndim == 2 and out.shape[1] == 1 else out


class OnnxClassifier(OnnxEstimator):
    """Labels come from onnxruntime's own label output, or (`labels: rounded`) as scikit-learn makes
    them, the first class of the highest probability, with probabilities rounded to 1e-6 first:
    onnxruntime adds tree votes in float32, so a tie (0.5, 0.5) can arrive as (0.49999997, 0.5); or
    (`labels: scores`, a linear classifier) from a second graph of its decision function, as scikit-learn
    predicts: far from the data, several classes' probabilities saturate to 1.0 and their argmax is a tie
    that the decision function does not have (the demo's SGD classifier: 122 of 384 probe labels).
    Compilation keeps whichever agrees with the estimator."""

    def __init__(self, folder: Path, meta: dict[str, Any], threads: int = 1):
        super().__init__(folder, meta, threads)
        self.classes_ = np.array(meta["classes"], dtype=meta["classes_dtype"])
        self.rounded = meta.get("labels") == "rounded"
        self.by_index = bool(meta.get("labels_by_index"))
        self.scores = None
        if meta.get("labels") == "scores":  # labels from the decision function's graph (a linear classifier)
            import onnxruntime as ort

            self.scores = ort.InferenceSession(str(folder / SCORES), self.session.get_session_options(),
                                               providers=["CPUExecutionProvider"])

    def predict(self, x: Any) -> np.ndarray:
        if self.scores is not None:  # the labels alone: the decision function's graph only
            return self._labels(self.scores.run(self.outputs[:1], {self.input: self._x(x)})[0])
        return self.predict_with_proba(x)[0]

    def predict_proba(self, x: Any) -> np.ndarray:
        return self.predict_with_proba(x)[1]

    def predict_with_proba(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        rows = self._x(x)
        labels, proba = self.session.run(self.outputs[:2], {self.input: rows})
        proba = np.clip(proba, 0.0, 1.0)  # float32 sums of votes can land a hair below 0 or above 1
        if self.scores is not None:
            labels = self.scores.run(self.outputs[:1], {self.input: rows})[0]
        elif self.rounded:
            return self.classes_[np.round(proba, 6).argmax(axis=1)], proba
        return self._labels(labels), proba

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        return self.classes_[labels.reshape(-1)] if self.by_index else labels.reshape(-1)


def open_compiled(folder: Path, threads: int = 1) -> OnnxEstimator:
    meta = json.loads((folder / "compiled.json").read_text())
    return OnnxClassifier(folder, meta, threads) if meta.get("classes") is not None \
        else OnnxEstimator(folder, meta, threads)


def is_sklearn_model(path: Path) -> bool:
    """Whether the MLflow model in `path` has the sklearn flavour (its MLmodel read, nothing imported)."""
    import yaml

    try:
        meta = yaml.safe_load((Path(path) / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return "sklearn" in (meta.get("flavors") or {})


def sklearn_source(path: Path) -> Path | None:
    """The file or folder a scikit-learn model at `path` compiles from (as serving/loading.py's `layout`
    finds it: an MLflow model of the sklearn flavour, a .joblib file or a folder of one), None for any
    other model; nothing is loaded."""
    path = Path(path)
    if (path / "MLmodel").is_file():
        return path if is_sklearn_model(path) else None
    if path.is_file() and path.suffix == ".joblib":
        return path
    found = sorted(path.glob("*.joblib")) if path.is_dir() else []
    return found[0] if len(found) == 1 else None


def entry(path: Path) -> Path | None:
    """What the cache keeps of the scikit-learn model at `path`: its compiled folder, or the file saying why
    it does not compile; None when it keeps nothing (or `path` holds another kind of model)."""
    source = sklearn_source(path)
    if source is None:
        return None
    found = cache_root() / key(source)
    refused = found.with_name(f"{found.name}.refused")
    return found if found.is_dir() else refused if refused.is_file() else None


def is_cached(model_path: Path) -> bool:
    """Whether `model_path` has been compiled and verified (without loading onnxruntime)."""
    try:
        return (cache_root() / key(model_path) / "compiled.json").is_file()
    except OSError:
        return False


def cached(model_path: Path, threads: int = 1) -> OnnxEstimator | None:
    """The compiled model of `model_path`, when it has been compiled and verified before."""
    folder = cache_root() / key(model_path)
    if not (folder / "compiled.json").is_file():
        return None
    try:
        return open_compiled(folder, threads)
    except Exception:  # noqa: BLE001 - an unreadable cache entry: compile again
        return None


def refused(model_path: Path) -> str | None:
    """Why `model_path` was found not to compile before (it is not tried again), or None."""
    try:
        return cache.refused(cache_root(), key(model_path), "it did not compile before")
    except OSError:  # its files cannot be read
        return None


def compile_estimator(estimator: Any, model_path: Path) -> tuple[OnnxEstimator | None, str]:
    """Compile `estimator` (loaded from `model_path`) and verify it; (the compiled model or None, why).
    Tries double-precision input first, then single (some onnxruntime operators have no double kernel).
    A model that does not compile or agree is remembered as such (its key's `.refused`), with why."""
    known = refused(model_path)
    if known is not None:
        return None, known
    compiled_est, why = _compile(estimator, model_path)
    if compiled_est is None and not why.startswith(("skl2onnx/onnxruntime are not installed", "its files cannot")):
        try:
            cache.refuse(cache_root(), key(model_path), why)
        except OSError:  # its files cannot be read
            pass
    return compiled_est, why


def _compile(estimator: Any, model_path: Path) -> tuple[OnnxEstimator | None, str]:
    try:
        import onnxruntime  # noqa: F401
        from skl2onnx import to_onnx
    except ImportError as exc:
        return None, f"skl2onnx/onnxruntime are not installed ({exc.name})"
    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        return None, "the estimator does not say how many features it takes"
    names = getattr(estimator, "feature_names_in_", None)
    classes = getattr(estimator, "classes_", None) if callable(getattr(estimator, "predict_proba", None)) else None
    classifier = classes is not None
    by_index = classifier and np.asarray(classes).dtype.kind not in "biu" and "classes_" in vars(estimator)
    target = estimator
    if by_index:  # onnxruntime's trees label with integers only: convert with class indices, map back here
        import copy

        target = copy.copy(estimator)
        target.classes_ = np.arange(len(np.asarray(classes)))
    try:
        folder = cache_root() / key(model_path)
        tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    except OSError as exc:
        return None, f"its files cannot be read ({exc})"
    why = "it does not agree with the estimator"
    try:
        probes = _probes(estimator, n)
        want = np.asarray(estimator.predict(_frame(probes, names)))
        want_p = np.asarray(estimator.predict_proba(_frame(probes, names))) if classifier else None
        meta: dict[str, Any] = {
            "labels_by_index": bool(by_index), "n_features": int(n),
            "feature_names": [str(c) for c in names] if names is not None else None,
            "classes": np.asarray(classes).tolist() if classifier else None,
            "classes_dtype": np.asarray(classes).dtype.str if classifier else None,
            "linear": _linear(estimator)}
        for dtype in ("float64", "float32"):
            try:
                onx = to_onnx(target, np.zeros((1, n), dtype=dtype), options={"zipmap": False} if classifier else None,
                              target_opset={"": 17, "ai.onnx.ml": 3})
            except Exception as exc:  # noqa: BLE001 - not every estimator converts: serve it with scikit-learn
                why = f"skl2onnx cannot convert it ({type(exc).__name__}: {str(exc)[:200]})"
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "model.onnx").write_bytes(onx.SerializeToString())
            modes = [(False, "onnx"), (True, "onnx"), (False, "rounded"), (True, "rounded")]
            if classifier and _scores_graph(target, n, dtype, tmp):
                modes += [(False, "scores"), (True, "scores")]
            for cast, labels in modes:
                if labels == "rounded" and not classifier:
                    break
                meta.update(cast_float32=cast, labels=labels, input_dtype=dtype, verified={})
                (tmp / "compiled.json").write_text(json.dumps(meta))
                try:
                    onnx_est = open_compiled(tmp)
                except Exception as exc:  # noqa: BLE001 - onnxruntime refuses the graph (a missing kernel)
                    why = f"onnxruntime cannot run it ({str(exc)[:200]})"
                    break
                ok, why = _agrees(onnx_est, probes, want, want_p)
                if ok:
                    meta["verified"] = {"rows": len(probes), "tolerance": TOLERANCE, "detail": why}
                    (tmp / "compiled.json").write_text(json.dumps(meta))
                    folder.parent.mkdir(parents=True, exist_ok=True)
                    shutil.rmtree(folder, ignore_errors=True)
                    os.replace(tmp, folder)
                    return open_compiled(folder), why
        return None, why
    except Exception as exc:  # noqa: BLE001 - anything unexpected: serve it with scikit-learn
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SCORES = "labels.onnx"  # a linear classifier's decision-function graph, whose labels scikit-learn's predict gives


def _scores_graph(target: Any, n: int, dtype: str, folder: Path) -> bool:
    """Write the decision-function graph of a linear classifier (its last step's raw scores) into `folder`;
    whether there is one."""
    from skl2onnx import to_onnx

    final = target.steps[-1][1] if hasattr(target, "steps") else target
    if getattr(final, "coef_", None) is None or not hasattr(final, "decision_function"):
        return False
    try:
        onx = to_onnx(target, np.zeros((1, n), dtype=dtype), options={id(final): {"zipmap": False, "raw_scores": True}},
                      target_opset={"": 17, "ai.onnx.ml": 3})
    except Exception:  # noqa: BLE001 - no such graph for it: the other ways are tried
        return False
    (folder / SCORES).write_bytes(onx.SerializeToString())
    return True


def _linear(estimator: Any) -> dict[str, Any] | None:
    """A linear model's coefficients (for explanations), kept beside the compiled model."""
    coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
    if coef is None or intercept is None:
        return None
    return {"coef": np.asarray(coef, dtype=np.float64).tolist(),
            "intercept": np.atleast_1d(np.asarray(intercept, dtype=np.float64)).tolist()}


def _frame(x: np.ndarray, names: Any) -> Any:
    if names is None:
        return x
    import pandas as pd

    return pd.DataFrame(x, columns=list(names))


def _agrees(onnx_est: Any, probes: np.ndarray, want: np.ndarray, want_p: np.ndarray | None) -> tuple[bool, str]:
    if want_p is None:
        got = onnx_est.predict(probes).astype(np.float64)
        scale = np.maximum(1.0, np.abs(want.astype(np.float64)))
        worst = float(np.max(np.abs(got - want.astype(np.float64)) / scale))
        return worst <= TOLERANCE, f"regression values within {worst:.1e} (relative)"
    labels, proba = onnx_est.predict_with_proba(probes)  # what predict and predict_proba answer, in one call
    if not np.array_equal(labels, want):
        return False, f"{int(np.sum(labels != want))} of {len(want)} probe labels differ"
    worst = float(np.max(np.abs(proba - want_p)))
    return worst <= TOLERANCE, f"labels equal, probabilities within {worst:.1e}"


def _probes(estimator: Any, n: int) -> np.ndarray:
    """Random rows at several scales, and for trees rows of the trees' own split thresholds."""
    rng = np.random.default_rng(0)
    rows = [rng.normal(0, scale, size=(PROBE_ROWS // 4, n)) for scale in (1.0, 10.0, 1000.0)]
    thresholds: dict[int, list[float]] = {}
    for tree in _trees(estimator):
        t = tree.tree_
        for f, v in zip(t.feature, t.threshold):
            if f >= 0:
                thresholds.setdefault(int(f), []).append(float(v))
    if thresholds:
        base = rng.normal(0, 1, size=(PROBE_ROWS, n))
        for f, values in thresholds.items():
            picked = rng.choice(np.array(values), size=PROBE_ROWS)
            nudge = rng.choice([-1.0, 0.0, 1.0], size=PROBE_ROWS)  # on, just below and just above the boundary
            toward = np.where(nudge < 0, -np.inf, np.inf).astype(np.float32)
            base[:, f] = np.where(nudge == 0, picked, np.nextafter(picked.astype(np.float32), toward).astype(np.float64))
        rows.append(base)
    return np.concatenate(rows)


def _trees(estimator: Any) -> list[Any]:
    if hasattr(estimator, "tree_"):
        return [estimator]
    found = getattr(estimator, "estimators_", None)
    if found is None:
        return []
    return [t for t in np.asarray(found, dtype=object).reshape(-1) if hasattr(t, "tree_")]
