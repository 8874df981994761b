"""A model as the server serves it: loaded once (serving/loading.py), described for OIP v2 metadata,
called on a batch of rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlyard.serving.protocol import BadRequest, TensorMeta

_NUMPY_TO_V2 = {"float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32",
                "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                "uint64": "UINT64", "bool": "BOOL", "object": "BYTES", "str": "BYTES"}
_COLUMN_TO_V2 = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL",
                 "string": "BYTES", "binary": "BYTES"}


FP32_MAX = float(np.finfo(np.float32).max)


# Parameters the protocols define for themselves (binary tensors, a v1 classifier's probabilities): never the model's
PROTOCOL_PARAMETERS = frozenset({"binary_data", "binary_data_output", "binary_data_size", "content_type", "headers",
                                 "probabilities"})


class ServedModel:
    """One loaded model. `predict(x, proba)` gives (predictions, probabilities or None) for rows `x`."""

    takes_rows = False  # rows are a numeric table (serving/custom.py has the models whose rows are JSON values)
    params: dict[str, str] = {}

    def __init__(self, name: str, version: str, path: Path, estimator: Any, pyfunc: Any = None,
                 platform: str = "sklearn", signature: dict | None = None):
        self.name, self.version, self.path, self.platform = name, version, path, platform
        self.estimator, self.pyfunc, self.signature = estimator, pyfunc, signature
        self.runtime, self.runtime_note = "scikit-learn" if platform == "sklearn" else platform, ""
        self._proba = getattr(estimator, "predict_proba", None) if estimator is not None else None
        self._both = getattr(estimator, "predict_with_proba", None) if estimator is not None else None
        self.classes: Any = getattr(estimator, "classes_", None) if self._proba is not None else None
        self.n_features: int | None = getattr(estimator, "n_features_in_", None)
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names: list[str] | None = [str(n) for n in names] if names is not None else None
        self.inputs, self.outputs = self._metadata(signature)
        # a pyfunc model's parameters (MLflow's params schema) and its named outputs (columns of its output
        # schema, or what it returns: a dict, a DataFrame of several columns)
        self.param_specs: dict[str, dict] = {p["name"]: p for p in (signature or {}).get("params") or []
                                             if isinstance(p, dict) and p.get("name")}
        declared = (signature or {}).get("outputs")
        named = [c.get("name") for c in declared] if isinstance(declared, list) and declared \
            and all(isinstance(c, dict) and c.get("type") != "tensor" for c in declared) else []
        self.named = estimator is None and pyfunc is not None and len(named) >= 2 and all(named)
        if self.named and isinstance(declared, list):
            self.outputs = [TensorMeta(str(c["name"]), _COLUMN_TO_V2.get(c.get("type"), "BYTES"), [-1]) for c in declared]

    @property
    def tensor_inputs(self) -> bool:
        """Whether the model's signature declares its inputs as tensors (each with its own shape)."""
        spec = (self.signature or {}).get("inputs")
        return self.estimator is None and isinstance(spec, list) and bool(spec) and spec[0].get("type") == "tensor"

    def v2_rows(self, inputs: list) -> Any:
        """The rows of a v2 request's input tensors: for a signature of tensors, each input a tensor of its
        declared shape (several by name, as MLflow's pyfunc takes them: Triton's `input0` UINT32 [2,2] with
        `input1` BOOL [3]); else one tensor as a table (a 1-D one as one row of n_features, else one
        column), or named 1-D tensors as the columns of a DataFrame."""
        if self.tensor_inputs:
            return self._tensors(inputs)
        columns = {m.name for m in self.inputs} if self.signature and self.estimator is None else set()
        if len(inputs) == 1 and inputs[0].name not in columns:  # a pyfunc's named column goes as a table
            t = inputs[0]
            x = t.data
            if x.ndim == 1:
                x = x.reshape(1, -1) if self.n_features and x.shape[0] == self.n_features else x.reshape(-1, 1)
            self.check_width(x, f"input {t.name!r}")
            return x
        import pandas as pd

        lengths = {t.data.reshape(-1).shape[0] for t in inputs}
        if len(lengths) != 1:
            raise BadRequest("inputs", sorted(lengths), "named 1-D inputs of one length each (one column each)")
        names = self.feature_names or [t.name for t in inputs]
        if self.n_features is not None and len(names) != self.n_features:  # never ONNX Runtime's 500
            raise BadRequest("inputs", f"{len(inputs)} tensors", f"one input of shape [rows, {self.n_features}], or "
                             f"{self.n_features} named 1-D inputs (a column each)")
        given = {t.name: t.data.reshape(-1) for t in inputs}
        missing = [n for n in names if n not in given]
        if missing:
            raise BadRequest("inputs", missing[0], f"the model's inputs: {', '.join(names)}")
        return pd.DataFrame({n: given[n] for n in names})

    def _tensors(self, inputs: list) -> Any:
        """The request's tensors for a signature of tensors: one as an array, several as a dict by name,
        each of its declared shape (a request without the leading batch axis, as Triton's clients send a
        model without batching, gets one)."""
        if len(self.inputs) == 1 and len(inputs) == 1:  # whatever its name (one the server made up, too)
            return self._shaped(inputs[0].data, self.inputs[0], f"input {inputs[0].name!r}")
        given = {t.name: t.data for t in inputs}
        wanted = {m.name for m in self.inputs}
        stray = [n for n in given if n not in wanted] + [m.name for m in self.inputs if m.name not in given]
        if stray or len(inputs) != len(given):
            raise BadRequest("inputs", stray[0] if stray else "a name twice", f"the model's inputs, one each: "
                             f"{self._declared()}")
        return {m.name: self._shaped(given[m.name], m, f"inputs.{m.name}") for m in self.inputs}

    @staticmethod
    def _shaped(data: np.ndarray, meta: TensorMeta, where: str) -> np.ndarray:
        declared = meta.shape

        def fits(a: np.ndarray) -> bool:
            return len(declared) == a.ndim and all(d == -1 or d == n for d, n in zip(declared, a.shape))

        if not fits(data) and len(declared) == data.ndim + 1:  # one row without its batch axis, or a column
            data = next((a for a in (data.reshape(1, *data.shape), data.reshape(*data.shape, 1)) if fits(a)), data)
        if not fits(data):
            raise BadRequest(where, f"shape {list(data.shape)}", f"shape {declared} (-1: any), as the model's "
                             "signature declares it")
        return data

    @staticmethod
    def rows_in(x: Any) -> int:
        """How many rows model input holds (a dict of tensors: the first one's leading axis)."""
        if isinstance(x, dict):
            first = next(iter(x.values()), np.empty(0))
            return int(first.shape[0]) if first.ndim else 1
        return len(x)

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    def predict(self, x: Any, proba: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        if proba and self._both is not None:  # labels and probabilities in one call, labels as the model makes them
            labels, p = self._both(x)
            return labels, p
        if proba and self._proba is not None:
            p = np.asarray(self._proba(x))
            return self.classes[p.argmax(axis=1)], p
        model = self.estimator if self.estimator is not None else self.pyfunc
        out = model.predict(x)
        if hasattr(out, "to_numpy"):
            out = out.to_numpy()
        out = np.asarray(out)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out, None

    def model_params(self, given: dict[str, Any], where: str = "parameters") -> dict[str, Any]:
        """The request's parameters meant for the model (the protocol's own, such as binary_data_output,
        left out), checked against the parameters its signature declares."""
        mine = {k: v for k, v in (given or {}).items() if k not in PROTOCOL_PARAMETERS}
        if not mine:
            return {}
        unknown = [k for k in mine if k not in self.param_specs]
        if unknown:
            takes = (f"one of the parameters its signature declares: {', '.join(sorted(self.param_specs))}"
                     if self.param_specs else "none: its signature declares no parameters")
            raise BadRequest(f"{where}.{unknown[0]}", mine[unknown[0]], f"a parameter model {self.name!r} takes; it takes {takes}")
        return mine

    def predict_outputs(self, x: Any, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Every output the model gives, by name: a pyfunc's dict or DataFrame columns as they are named
        (`params` go to it, MLflow checking them against its signature); otherwise `predict`."""
        if self.pyfunc is None or self.estimator is not None:
            preds, _ = self.predict(x)
            return {"predict": preds}
        try:
            out = self.pyfunc.predict(x, params=params or None)
        except Exception as exc:
            if params and type(exc).__name__ == "MlflowException" and "param" in str(exc).lower():
                raise BadRequest("parameters", params, f"values of the types model {self.name!r} declares "
                                 f"({exc})"[:2000]) from None
            raise
        if isinstance(out, dict):
            return {str(k): np.asarray(v) for k, v in out.items()}
        if hasattr(out, "columns") and (len(out.columns) > 1 or self.named):
            return {str(c): out[c].to_numpy() for c in out.columns}
        if hasattr(out, "to_numpy"):
            out = out.to_numpy()
        arr = np.asarray(out)
        return {"predict": arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr}

    @property
    def explainable(self) -> bool:
        return getattr(self.estimator, "coef_", None) is not None and getattr(self.estimator, "intercept_", None) is not None

    def explain(self, x: Any) -> list[dict[str, Any]]:
        """For a linear model, each row's prediction as the intercept plus one contribution per feature
        (coefficient times value), toward the predicted class (the positive one for two classes)."""
        coef = np.atleast_2d(np.asarray(self.estimator.coef_, dtype=np.float64))
        intercept = np.atleast_1d(np.asarray(self.estimator.intercept_, dtype=np.float64))
        values = np.asarray(x.to_numpy() if hasattr(x, "to_numpy") else x, dtype=np.float64)
        preds, _ = self.predict(x)
        names = self.feature_names or [f"x{i}" for i in range(values.shape[1])]
        out = []
        for row, pred in zip(values, preds):
            k = 0
            if self.classes is not None and coef.shape[0] > 1:
                k = int(np.flatnonzero(self.classes == pred)[0])
            contrib = coef[k] * row
            item: dict[str, Any] = {"prediction": pred.item() if hasattr(pred, "item") else pred,
                                    "intercept": float(intercept[k]),
                                    "contributions": dict(zip(names, contrib.tolist()))}
            if self.classes is not None:
                item["toward_class"] = (self.classes[k] if coef.shape[0] > 1 else self.classes[-1]).item()
                item["score"] = float(intercept[k] + contrib.sum())  # the class's decision function
            out.append(item)
        return out

    def rows(self, instances: list[Any], where: str = "instances") -> Any:
        """v1 instances as model input: a 2-D array of vectors, or a DataFrame of named fields."""
        first = instances[0]
        if isinstance(first, dict):
            import pandas as pd

            cols = self.feature_names or list(first)
            odd = [r for r in instances if not isinstance(r, dict)]
            if odd or not cols:
                raise BadRequest(where, _short_value(odd[0]) if odd else "{}",
                                 "rows that are all objects of named fields, or all lists of numbers")
            if self.n_features is not None and len(cols) != self.n_features:
                raise BadRequest(where, f"{len(cols)} fields", f"{self.n_features} features per row, as the model "
                                 "was fitted")
            missing = [c for c in cols if any(c not in r for r in instances)]
            if missing:
                raise BadRequest(where, f"rows without {missing[0]!r}", f"objects with the fields {', '.join(cols)}")
            return pd.DataFrame([[r[c] for c in cols] for r in instances], columns=cols)
        try:
            x = np.asarray(instances)
        except ValueError as exc:
            raise BadRequest(where, "rows of different lengths", f"rows of equal length ({exc})") from None
        if x.dtype == object:
            raise BadRequest(where, "mixed or nested values", "rows of numbers")
        if x.dtype.kind in "iuf" and not (np.isfinite(x) & (np.abs(x) <= FP32_MAX)).all():
            raise BadRequest(where, _short_value(x[~(np.isfinite(x) & (np.abs(x) <= FP32_MAX))][0].item()),
                             "finite numbers within ±3.4e38 (FP32's range, in which compiled models compute)")
        if x.ndim == 1:
            x = x.reshape(1, -1) if self.n_features and x.shape[0] == self.n_features else x.reshape(-1, 1)
        self.check_width(x, where)
        return x

    def check_types(self, x: Any, where: str) -> None:
        """Strings for an input that the model's signature declares numeric: 400 naming the input and the
        type it takes. (Without a signature the model itself is the judge: see ModelServer._predict.)"""
        if not self.signature:
            return
        numeric = {m.name: m.datatype for m in self.inputs if m.datatype.startswith(("FP", "INT", "UINT", "BOOL"))}
        columns = list(x.items()) if isinstance(x, dict) else \
            [(c, np.asarray(x[c])) for c in x.columns] if hasattr(x, "columns") else [(None, x)]
        for name, values in columns:
            datatype = numeric.get(name) if name is not None else (next(iter(numeric.values()), None)
                                                                    if len(self.inputs) == 1 else None)
            if datatype is not None and has_strings(values):
                what = f"{where}.{name}" if name is not None else where
                raise BadRequest(what, "strings", f"{datatype} numbers: model {self.name!r} takes "
                                 f"{self._declared()} (its signature)")

    def _declared(self) -> str:
        return ", ".join(f"{m.name} {m.datatype}{m.shape}" for m in self.inputs)

    def check_width(self, x: np.ndarray, where: str) -> None:
        if x.ndim != 2:
            raise BadRequest(where, f"shape {list(x.shape)}", f"2 dimensions: [rows, {self.n_features or 'features'}]")
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise BadRequest(where, f"{x.shape[1]} features", f"{self.n_features} features per row, as the model was fitted")

    def _metadata(self, signature: dict | None) -> tuple[list[TensorMeta], list[TensorMeta]]:
        outputs = [TensorMeta("predict", _v2(self.classes.dtype) if self.classes is not None else "FP64", [-1])]
        if self.is_classifier:
            outputs.append(TensorMeta("predict_proba", "FP64", [-1, len(self.classes)]))
        spec = (signature or {}).get("inputs")
        if spec and isinstance(spec, list) and spec[0].get("type") == "tensor":
            return [TensorMeta(str(c.get("name") or f"input-{i}"), _v2(c.get("tensor-spec", {}).get("dtype", "float64")),
                               list(c.get("tensor-spec", {}).get("shape", [-1, -1]))) for i, c in enumerate(spec)], outputs
        if spec and isinstance(spec, list):
            return [TensorMeta(c.get("name", f"input-{i}"), _COLUMN_TO_V2.get(c.get("type"), "BYTES"), [-1])
                    for i, c in enumerate(spec)], outputs
        if self.feature_names:
            return [TensorMeta(n, "FP64", [-1]) for n in self.feature_names], outputs
        return [TensorMeta("input-0", "FP64", [-1, self.n_features or -1])], outputs


def has_strings(x: Any) -> bool:
    """Whether model input (an array or a DataFrame) holds strings or bytes."""
    if hasattr(x, "dtypes"):
        return any(has_strings(np.asarray(x[c])) for c in x.columns if x[c].dtype.kind in "OSU")
    arr = np.asarray(x)
    if arr.dtype.kind in "SU":
        return True
    return arr.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in arr.reshape(-1)[:1000])


def _short_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _v2(dtype: Any) -> str:
    return _NUMPY_TO_V2.get(np.dtype(dtype).name if not isinstance(dtype, str) else dtype, "BYTES")
