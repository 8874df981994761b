"""TorchServe's handler interface without TorchServe: `BaseHandler` and the context it is initialised
with, so a `handler.py` written for TorchServe (`from ts.torch_handler.base_handler import
BaseHandler`) runs in the mlyard model server unchanged. `install()` makes that import resolve here
when the `ts` package is absent.

As TorchServe's base handler does: `initialize` finds the one model class in `model.py` (the model
file), builds it without arguments and loads the weight file's state dict into it (a whole pickled
module is taken as it is); the model runs in eval mode on the CPU. `preprocess` makes a float32
tensor of the rows, `inference` calls the model without gradients, `postprocess` turns the result
into a list. `handle` is the three in a row.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Any


class Context:
    """What TorchServe hands `initialize` and `handle`, filled from the model directory."""

    def __init__(self, model_dir: Path, model_name: str, serialized_file: str, params: dict[str, str]):
        self.model_name = model_name
        self.system_properties: dict[str, Any] = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": None}
        self.manifest = {"model": {"modelName": model_name, "serializedFile": serialized_file,
                                   "modelFile": "model.py", "handler": "handler.py"}}
        self.model_yaml_config = dict(params)  # the version's parameters, names as given
        self.params = self.model_yaml_config

    def get_request_header(self, idx: int, key: str) -> None:
        return None


class BaseHandler:
    def __init__(self) -> None:
        self.model: Any = None
        self.device: Any = None
        self.context: Context | None = None
        self.manifest: dict | None = None
        self.initialized = False

    def initialize(self, context: Context) -> None:
        import torch

        self.context, self.manifest = context, context.manifest
        self.device = torch.device("cpu")
        model_dir = Path(context.system_properties["model_dir"])
        weights = model_dir / context.manifest["model"]["serializedFile"]
        loaded = torch.load(weights, map_location=self.device, weights_only=False)
        if isinstance(loaded, torch.nn.Module):
            self.model = loaded
        else:
            self.model = _model_class(model_dir / context.manifest["model"]["modelFile"])()
            self.model.load_state_dict(loaded)
        self.model.to(self.device).eval()
        self.initialized = True

    def preprocess(self, data: list) -> Any:
        import torch

        return torch.as_tensor(data, dtype=torch.float32, device=self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return self.model(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list:
        return data.tolist()

    def handle(self, data: list, context: Context) -> list:
        return self.postprocess(self.inference(self.preprocess(data)))


def _model_class(model_file: Path) -> type:
    import torch

    spec = importlib.util.spec_from_file_location(f"mlyard_model_{abs(hash(str(model_file)))}", model_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if c.__module__ == module.__name__ and issubclass(c, torch.nn.Module)]
    if len(found) != 1:
        raise ValueError(f"{model_file.name} must define exactly one torch.nn.Module class; it defines {len(found)}")
    return found[0]


def install() -> None:
    """Make `ts.torch_handler.base_handler` import from here."""
    if "ts.torch_handler.base_handler" in sys.modules:
        return
    names = ("ts", "ts.torch_handler", "ts.torch_handler.base_handler")
    for name in names:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["ts.torch_handler.base_handler"].BaseHandler = BaseHandler  # type: ignore[attr-defined]
    sys.modules["ts.torch_handler"].base_handler = sys.modules["ts.torch_handler.base_handler"]  # type: ignore[attr-defined]
    sys.modules["ts"].torch_handler = sys.modules["ts.torch_handler"]  # type: ignore[attr-defined]
