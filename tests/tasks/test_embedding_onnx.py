"""The embedding model on onnxruntime (tasks/embedding_onnx.py): the export agrees with
sentence-transformers on texts it was not checked on, a later process loads it without importing torch,
and a model the export does not take says why and runs on torch as before. The default model's runs
read the export `make install` made (embedding_onnx.prepare); the first test exports it again, into a
cache of its own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlyard.core.specs.rag import EmbeddingSpec
from mlyard.tasks import embedding_onnx
from mlyard.tasks.embeddings import default_model_dir, embedder

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["How do I open a file for appending?", "A PostgreSQL index on a vector column",
         "l'été à Paris", "x" * 3000, "The with statement wraps a block in a context manager. " * 40]


def test_the_onnx_model_agrees_with_sentence_transformers_and_loads_without_torch(tmp_path):
    from sentence_transformers import SentenceTransformer

    cache = tmp_path / "cache"
    ok, why = embedding_onnx.export(default_model_dir(), cache / "embeddings")
    assert ok and "exported now" in why, why
    model = embedding_onnx.OnnxEmbedder(cache / "embeddings" / embedding_onnx.key(default_model_dir()))
    assert model.report["max_difference"] <= embedding_onnx.TOLERANCE
    assert model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert isinstance(embedder(EmbeddingSpec()), embedding_onnx.OnnxEmbedder), "runs read an export"
    got = model.encode(TEXTS)
    want = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True).encode(
        TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    assert got.shape == want.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= embedding_onnx.TOLERANCE
    assert model.encode([]).shape == (0, 384)

    # a fresh process finds the export and never imports torch
    code = ("import sys, json; from mlyard.core.specs.rag import EmbeddingSpec; from mlyard.tasks.embeddings import embedder; "
            "m = embedder(EmbeddingSpec()); v = m.encode(['l\\'été à Paris']); "
            "print(json.dumps([type(m).__name__, 'torch' in sys.modules, v[0].tolist()]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                              "MLYARD_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    kind, torch_loaded, vector = json.loads(out.stdout.strip().splitlines()[-1])
    assert (kind, torch_loaded) == ("OnnxEmbedder", False)
    assert float(np.abs(np.array(vector) - want[2]).max()) <= embedding_onnx.TOLERANCE


@pytest.mark.parametrize("change, why", [
    ({"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}, "not the mean of the tokens"),
    (None, "not Transformer, Pooling"),
])
def test_a_model_the_export_does_not_take_says_why(tmp_path, change, why):
    folder = tmp_path / "model"
    folder.mkdir()
    source = default_model_dir()
    for f in source.iterdir():
        (folder / f.name).symlink_to(f)
    if change is not None:
        (folder / "1_Pooling").unlink()
        (folder / "1_Pooling").mkdir()
        config = json.loads((source / "1_Pooling" / "config.json").read_text())
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({**config, **change}))
    else:
        (folder / "modules.json").unlink()
        modules = json.loads((source / "modules.json").read_text())
        (folder / "modules.json").write_text(json.dumps(modules + [{"idx": 3, "name": "3", "path": "3_Dense",
                                                                   "type": "sentence_transformers.models.Dense"}]))
    model, reason = embedding_onnx.load(folder)
    assert model is None and why in reason, reason
