"""Models whose rows are JSON values rather than a numeric table: PyTorch weights served through a
TorchServe-style handler, and the Hugging Face runtime. Both take the request's `instances` as they
are (a list of rows; a v2 request's single input, BYTES decoded to text) and answer one JSON value per
row. They share the model server's batching: concurrent requests become one handler call over all
their rows, and each caller gets back its own rows.

PyTorch (EasyMaker's layout): `model.py` (one model class), `handler.py` (a class with `preprocess`,
`inference`, `postprocess`, usually a subclass of TorchServe's `BaseHandler`), a weight file (`.pt`,
`.pth`, `.bin`), an optional `extra/` directory. The handler's `preprocess` receives the rows as the
seed's example shows: `[[1.0, 2.0], [3.0, 4.0]]`. Where TorchServe is not installed, `ts.torch_handler.
base_handler.BaseHandler` is served by serving/torch_handler.py, which behaves the same way.

Hugging Face: a local directory saved with `save_pretrained` (config.json, safetensors weights, the
tokenizer), and a task: the `task` parameter, else the architecture's (`BertForMaskedLM` -> fill_mask).
The five tasks: sequence_classification, token_classification, fill_mask, text_generation,
text2text_generation. Other parameters named like generation options (max_new_tokens, top_k, ...)
apply to every request.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

from mlyard.core.errors import SpecError
from mlyard.serving.protocol import BadRequest

WEIGHTS = (".pt", ".pth", ".bin")
HF_TASKS = {"sequence_classification": "text-classification", "token_classification": "token-classification",
            "fill_mask": "fill-mask", "text_generation": "text-generation", "text2text_generation": None}
_ARCH_TASKS = (("ForSequenceClassification", "sequence_classification"),
               ("ForTokenClassification", "token_classification"), ("ForMaskedLM", "fill_mask"),
               ("ForConditionalGeneration", "text2text_generation"), ("ForSeq2SeqLM", "text2text_generation"),
               ("ForCausalLM", "text_generation"), ("LMHeadModel", "text_generation"))
_INT_OPTIONS = {"max_new_tokens", "max_length", "top_k", "num_beams", "min_new_tokens"}
_FLOAT_OPTIONS = {"temperature", "top_p", "repetition_penalty"}


class RowModel:
    """The interface of serving/runtime.ServedModel for rows that are JSON values."""

    takes_rows = True
    explainable = False
    runtime_note = ""

    named = False  # one output, whatever the handler answers

    def check_types(self, x: Any, where: str) -> None:
        """Rows are JSON values the handler judges itself."""

    def model_params(self, given: dict[str, Any], where: str = "parameters") -> dict[str, Any]:
        """A handler takes its version's parameters (MLYARD_PARAM_*), not a request's: those are not passed."""
        return {}

    is_classifier = False
    classes = None
    n_features = None
    feature_names = None

    def __init__(self, name: str, version: str, path: Path, platform: str, handle: Callable[[list], list],
                 inputs: list, outputs: list, params: dict[str, str]):
        self.name, self.version, self.path, self.platform = name, version, path, platform
        self._handle, self.inputs, self.outputs, self.params = handle, inputs, outputs, params
        self.runtime = platform

    def rows(self, instances: list[Any], where: str = "instances") -> list[Any]:
        return instances

    def v2_rows(self, inputs: list) -> list[Any]:
        if len(inputs) != 1:
            raise BadRequest("inputs", len(inputs), f"one input for model {self.name!r}")
        data = inputs[0].data
        if data.dtype == object:
            data = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(data)
        return data.tolist() if data.ndim > 1 or data.dtype != object else list(data)

    def check_width(self, x: Any, where: str) -> None:
        return None

    def predict(self, x: list[Any], proba: bool = False) -> tuple[Any, None]:
        out = self._handle(x)
        if hasattr(out, "tolist"):
            out = out.tolist()
        if not isinstance(out, list) or len(out) != len(x):
            got = len(out) if isinstance(out, list) else type(out).__name__
            raise RuntimeError(f"the handler answered {got} results for {len(x)} rows; postprocess must return "
                               "a list with one result per row")
        return out, None


def as_tensor(out: Any) -> np.ndarray:
    """Results as a v2 tensor: numbers as numbers (rows of equal length), anything else as BYTES,
    text as it is and other values as JSON."""
    try:
        array = np.asarray(out)
        if array.dtype.kind in "biuf":
            return array
    except ValueError:  # ragged rows
        pass
    return np.array([v if isinstance(v, (str, bytes)) else orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()
                     for v in out], dtype=object)


# -- PyTorch ----------------------------------------------------------------------------------------

def is_torch_dir(path: Path) -> bool:
    return (path / "handler.py").is_file() and (path / "model.py").is_file()


def torch_weights(path: Path) -> Path:
    """The one weight file of a PyTorch model folder (refused unless there is exactly one)."""
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHTS)
    if len(weights) != 1:
        raise SpecError("model", str(path), f"one weight file ({', '.join(WEIGHTS)}) beside model.py and handler.py; "
                        f"found {', '.join(p.name for p in weights) or 'none'}")
    return weights[0]


def load_torch(path: Path, name: str, version: str, params: dict[str, str]) -> RowModel:
    weights = [torch_weights(path)]
    if importlib.util.find_spec("torch") is None:
        raise SpecError("model", str(path), "torch installed to serve a PyTorch model (pip install torch)")
    if importlib.util.find_spec("ts") is None:  # TorchServe absent: its BaseHandler from here
        from mlyard.serving import torch_handler

        torch_handler.install()
    handler_module = _import(path / "handler.py", f"mlyard_handler_{abs(hash(str(path)))}")
    classes = [c for _, c in inspect.getmembers(handler_module, inspect.isclass)
               if c.__module__ == handler_module.__name__ and callable(getattr(c, "preprocess", None))]
    if len(classes) != 1:
        raise SpecError("handler.py", str(path / "handler.py"), "exactly one handler class (with preprocess, "
                        f"inference and postprocess); found {len(classes)}")
    from mlyard.serving.torch_handler import Context

    context = Context(path, name, weights[0].name, params)
    handler: Any = classes[0]()
    handler.initialize(context)

    def handle(rows: list) -> list:
        if callable(getattr(handler, "handle", None)):
            return handler.handle(rows, context)
        return handler.postprocess(handler.inference(handler.preprocess(rows)))

    from mlyard.serving.protocol import TensorMeta

    return RowModel(name, version, path, "pytorch", handle, [TensorMeta("instances", "FP32", [-1, -1])],
                    [TensorMeta("predictions", "BYTES", [-1])], params)


def _import(file: Path, module: str) -> Any:
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))  # handler.py imports model.py and its neighbours
    spec = importlib.util.spec_from_file_location(module, file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
    return mod


# -- Hugging Face -----------------------------------------------------------------------------------

def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def hf_task(path: Path, params: dict[str, str]) -> str:
    task = params.get("task") or params.get("TASK")
    if task:
        task = task.replace("-", "_")
        if task not in HF_TASKS:
            raise SpecError("parameters.task", task, f"one of {', '.join(HF_TASKS)}")
        return task
    config = orjson.loads((path / "config.json").read_bytes())
    for arch in config.get("architectures") or []:
        for suffix, found in _ARCH_TASKS:
            if arch.endswith(suffix):
                return found
    raise SpecError("parameters.task", None, f"a task for this Hugging Face model ({', '.join(HF_TASKS)}); "
                    f"its architecture {config.get('architectures')} does not say")


def load_hf(path: Path, name: str, version: str, params: dict[str, str]) -> RowModel:
    task = hf_task(path, params)
    for missing in ("transformers", "torch"):
        if importlib.util.find_spec(missing) is None:
            raise SpecError("model", str(path), f"the llm extra and torch to serve a Hugging Face model ({missing} is "
                            "missing): pip install -e '.[llm,torch]'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never reach for the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    options = _generation_options(params)
    if task == "text2text_generation":
        handle = _seq2seq(path, options)
    else:
        from transformers import pipeline
        from transformers.pipelines.base import PipelineException

        pipe: Any = pipeline(HF_TASKS[task], model=str(path), tokenizer=str(path), device="cpu")  # type: ignore[arg-type]
        call_options = options if task == "text_generation" else {}
        if task == "fill_mask":
            call_options = {"top_k": options["top_k"]} if "top_k" in options else {}

        def handle(rows: list) -> list:
            texts = [_text(r) for r in rows]
            try:
                out = pipe(texts, **call_options)
            except PipelineException as exc:  # the input does not suit the task (no [MASK], ...): the caller's
                raise BadRequest("instances", texts[0][:80] if len(texts) == 1 else f"{len(texts)} rows", str(exc)) from None
            if task in ("fill_mask", "token_classification") and len(texts) == 1 and (not out or isinstance(out[0], dict)):
                out = [out]  # the pipeline unwraps a single text's candidates
            if task == "text_generation":
                return [o[0]["generated_text"] if isinstance(o, list) else o["generated_text"] for o in out]
            return _plain(out)

    from mlyard.serving.protocol import TensorMeta

    return RowModel(name, version, path, f"huggingface:{task}", handle, [TensorMeta("text", "BYTES", [-1])],
                    [TensorMeta("predictions", "BYTES", [-1])], params)


def _seq2seq(path: Path, options: dict[str, Any]) -> Callable[[list], list]:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    generate = {"max_new_tokens": 32, **options}

    def handle(rows: list) -> list:
        batch = tokenizer([_text(r) for r in rows], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, **generate)
        return tokenizer.batch_decode(out, skip_special_tokens=True)

    return handle


def _generation_options(params: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = k.lower().replace("-", "_")
        try:
            if key in _INT_OPTIONS:
                out[key] = int(v)
            elif key in _FLOAT_OPTIONS:
                out[key] = float(v)
        except ValueError:
            raise SpecError(f"parameters.{k}", v, "a number") from None
    if "temperature" in out:
        out["do_sample"] = out["temperature"] > 0
    return out


def _text(row: Any) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row, list) and len(row) == 1 and isinstance(row[0], str):
        return row[0]
    raise BadRequest("instances", str(row)[:80], 'text rows: "some text" or {"text": "some text"}')


def _plain(value: Any) -> Any:
    """Pipeline output as JSON values (numpy scalars to Python)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return value
