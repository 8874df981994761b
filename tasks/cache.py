"""Where the model server keeps what it derives from models (compiled scikit-learn models, de-quantized
GGUF files): `MLYARD_CACHE_DIR`, else ~/.cache/mlyard."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MLYARD_CACHE_DIR") or Path.home() / ".cache" / "mlyard")
