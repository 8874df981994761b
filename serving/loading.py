"""A model's files to the model the server serves (serving/runtime.py's ServedModel): MLflow models
(through the one model loader, tasks/models.py), scikit-learn `.joblib` directories (EasyMaker's
scikit-learn format), PyTorch weights with a handler and Hugging Face directories (serving/custom.py).
A scikit-learn model runs compiled to ONNX when it compiles and agrees (tasks/compiled.py). Other
layouts are recognised and refused with the reason before anything starts.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mlyard.core.errors import SpecError
from mlyard.serving import custom
from mlyard.serving.runtime import ServedModel
from mlyard.tasks import compiled


def layout(path: Path | str) -> tuple[str, Path]:
    """What kind of model `path` holds, checked without loading it: ("mlflow", dir), ("torch", dir),
    ("hf", dir) or ("joblib", file). A layout that is recognised but cannot be served here (TensorFlow
    SavedModel, Triton) is refused with why, as is one that is not recognised."""
    path = Path(path)
    if (path / "MLmodel").is_file():
        return "mlflow", path
    if path.is_dir() and custom.is_torch_dir(path):
        custom.torch_weights(path)
        return "torch", path
    if path.is_dir() and custom.is_hf_dir(path):
        return "hf", path
    if path.is_file() and path.suffix == ".joblib":
        return "joblib", path
    if path.is_dir():
        found = sorted(path.glob("*.joblib"))
        if len(found) == 1:
            return "joblib", found[0]
        if len(found) > 1:
            raise SpecError("model", str(path), f"one .joblib file; it holds {', '.join(f.name for f in found)}")
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            raise SpecError("model", str(path), "a model this server can run: it is a TensorFlow SavedModel and "
                            "TensorFlow is not installed here (pip install tensorflow-cpu to serve it)")
        if (path / "config.pbtxt").is_file():
            raise SpecError("model", str(path), "a model this server can run: it is a Triton model repository "
                            "entry (config.pbtxt); serve it with Triton Inference Server")
    if not path.exists():
        raise SpecError("model", str(path), "a directory holding an MLflow model or a .joblib file; nothing is there")
    raise SpecError("model", str(path), "an MLflow model (a directory with MLmodel), a scikit-learn .joblib file, "
                    "PyTorch weights with model.py and handler.py, or a Hugging Face directory (config.json and "
                    ".safetensors weights)")


def load(path: Path | str, name: str | None = None, version: str = "1",
         params: dict[str, str] | None = None, compile: bool = True) -> ServedModel:
    """The model in directory `path` (see `layout`): an MLflow model, a scikit-learn `.joblib`
    directory, PyTorch weights with a handler, or a Hugging Face directory (serving/custom.py); `params`
    are the version's parameters. A scikit-learn model runs compiled to ONNX when it compiles and agrees
    with itself (tasks/compiled.py; `compile=False` keeps scikit-learn)."""
    kind, found = layout(path)
    name = name or Path(path).name
    params = params or {}
    if kind == "mlflow":
        served = _mlflow(found, name, version, compile)
        served.params = params
        return served
    if kind == "torch":
        return custom.load_torch(found, name, version, params)  # type: ignore[return-value]
    if kind == "hf":
        return custom.load_hf(found, name, version, params)  # type: ignore[return-value]
    return _joblib(found, name, version, compile)


def to_compile(path: Path | str) -> Path | None:
    """The model file or folder a scikit-learn model at `path` compiles from, when it has been neither
    compiled nor refused before (its first load would compile it); else None."""
    kind, found = layout(path)
    if kind == "mlflow":
        if not compiled.is_sklearn_model(found):
            return None
    elif kind != "joblib":
        return None
    return None if compiled.is_cached(found) or compiled.refused(found) else found


def _mlflow(path: Path, name: str, version: str, compile: bool) -> ServedModel:
    meta = yaml.safe_load((path / "MLmodel").read_text()) or {}
    signature = meta.get("signature")
    if signature:
        import json

        signature = {k: json.loads(v) if isinstance(v, str) else v for k, v in signature.items()}
    flavors = meta.get("flavors") or {}
    platform = "sklearn" if "sklearn" in flavors else next((f for f in flavors if f != "python_function"), "python_function")
    if compile and platform == "sklearn":
        ready = compiled.cached(path)  # compiled before: scikit-learn is not even imported
        if ready is not None:
            return _compiled(ServedModel(name, version, path, ready, None, platform, signature), "cached")
    from mlyard.tasks.models import load_model

    loaded = load_model(str(path), compile=False)  # compiled below, saying how
    served = ServedModel(name, version, path, loaded.raw, loaded.pyfunc, platform, signature)
    return _compile(served, path) if compile and platform == "sklearn" and loaded.raw is not None else served


def _joblib(file: Path, name: str, version: str, compile: bool) -> ServedModel:
    if compile:
        ready = compiled.cached(file)
        if ready is not None:
            return _compiled(ServedModel(name, version, file.parent, ready, platform="sklearn"), "cached")
    import joblib

    served = ServedModel(name, version, file.parent, joblib.load(file), platform="sklearn")
    return _compile(served, file) if compile else served


def _compile(served: ServedModel, source: Path) -> ServedModel:
    """The same model compiled to ONNX when it compiles and agrees; else as it is, saying why."""
    est, why = compiled.compile_estimator(served.estimator, source)
    if est is None:
        served.runtime, served.runtime_note = "scikit-learn", f"not compiled: {why}"
        return served
    return _compiled(ServedModel(served.name, served.version, served.path, est, None, served.platform,
                                 served.signature), f"compiled now, {why}")


def _compiled(served: ServedModel, note: str) -> ServedModel:
    served.runtime, served.runtime_note = "onnxruntime", note
    return served
