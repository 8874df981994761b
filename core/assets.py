"""Where the files mlyard deploys are: the `infra` package's data (infra/__init__.py), found through the
import system, so a wheel installed anywhere reads the same files as a checkout."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from mlyard.core.errors import StackError


@cache
def infra_root() -> Path:
    """The `infra` folder mlyard runs with. Wheels and checkouts both install it as a plain folder, never
    inside a zip, so its files are ordinary paths (kubectl and Prefect's deploy read them by name)."""
    root = files("mlyard.infra")
    if not isinstance(root, Path):
        raise StackError(f"mlyard's infra package is not on the file system ({root}): install mlyard unzipped")
    return root


def infra(*parts: str) -> Path:
    """A file or folder of infra/, e.g. `infra("k8s", "overlays", "dev")`."""
    return infra_root().joinpath(*parts)
