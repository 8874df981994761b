"""Where the model server keeps what it derives from models (compiled scikit-learn models, de-quantized
GGUF files): `MLYARD_CACHE_DIR`, else ~/.cache/mlyard."""

from __future__ import annotations

from pathlib import Path

from mlyard.core.environment import cache_root


def cache_dir() -> Path:
    return cache_root()


def refused(root: Path, key: str, default: str) -> str | None:
    """Why the entry `key` under `root` was found not to work before (it is not tried again), or None."""
    try:
        return (root / f"{key}.refused").read_text() or default
    except OSError:
        return None


def refuse(root: Path, key: str, why: str) -> None:
    """Remember that the entry `key` under `root` does not work, and why (best effort)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{key}.refused").write_text(why)
    except OSError:
        pass
