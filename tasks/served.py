"""A model version as its local replicas serve it, found by the endpoint flow before they start: its files on
this machine (where the stack keeps them, else a copy under <home>/serving/), its registered parameters,
its compiled entry and, for a pushed entry script, the environment its deployment names (built here, once),
so that a replica, in its sandbox, reaches neither the registry nor the stack nor the package index.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Served:
    """A version as its local replicas serve it: its registered parameters, its files on this machine and
    its compiled entry (tasks/compiled.py: a scikit-learn model compiled before), both found by the flow."""

    parameters: dict[str, str]
    path: str | None = None
    compiled: str | None = None
    python: str | None = None  # a pushed entry script's: its deployment environment's interpreter (tasks/azure_env.py)


def served_versions(p: Any, view: dict[str, Any], stage: str) -> dict[str, Served]:
    """Each of the stage's versions as its local replicas serve it (flows/platform.py's Platform `p`): its
    files on this machine (where the stack keeps them, else a copy under <home>/serving/) and its compiled
    entry, so that its replicas reach neither the registry nor the stack."""
    from mlyard.tasks import compiled

    st = next(s for s in view["stages"] if s["name"] == stage)
    out: dict[str, Served] = {}
    for r in st["resources"]:
        name, version = r["model"].rsplit("/", 1)
        found = p.models.get_version(name, version)
        path = local_source(found.source) or model_copy(p.settings, f"models:/{name}/{version}", name, version)
        entry = compiled.entry(path)
        out[r["model"]] = Served(dict(found.parameters), str(path), str(entry) if entry is not None else None,
                                 entry_python(p.settings, path, dict(found.parameters)))
    return out


def entry_python(settings: Any, path: Path, parameters: dict[str, str]) -> str | None:
    """A pushed entry script's interpreter: that of the environment its deployment names (a conda file or
    requirements.txt beside it), built here by the flow, once, so its replicas find it ready and read it
    alone; None for any other version, or one that names no packages (the platform's Python runs it)."""
    import logging
    import sys

    from mlyard.tasks import azure_env
    from mlyard.tasks.replicas import CODE_KIND

    if parameters.get(CODE_KIND) != "entry-script":
        return None
    env = azure_env.find(path / parameters.get("entry_script", "score.py"))
    python = azure_env.python_for(env, settings.envs_dir, logging.getLogger("mlyard.endpoint").info)
    return None if python == sys.executable else python


def engine_folders(engine: str | None) -> list[str]:
    """What a runtime variant's engine on PATH needs to run in a replica's sandbox: the installation it is in
    (the prefix above its bin folder: a pyenv shim needs pyenv, a venv's script its venv), read-only."""
    found = shutil.which(engine) if engine else None
    if found is None:
        return []
    folders = []
    for path in {found, os.path.realpath(found)}:
        bin_folder = Path(path).parent
        folders.append(str(bin_folder if bin_folder.parent == Path("/") else bin_folder.parent))
    return folders


def local_source(source: str | None) -> Path | None:
    """The local directory a registered version's files are kept in, when they are (file:// or a path)."""
    if not source:
        return None
    if source.startswith("file://"):
        from urllib.parse import unquote, urlparse

        source = unquote(urlparse(source).path)
    if "://" in source:
        return None
    path = Path(source)
    # MLflow models only: pushed code (an entry script, a model folder) is served from a copy (model_copy)
    return path if (path / "MLmodel").is_file() else None


def model_copy(settings: Any, uri: str, name: str, version: str) -> Path:
    """A local copy of the model at `uri`, kept under <home>/serving/ so a restart does not fetch again
    (fetched under a temporary name and renamed, so an interrupted fetch is never taken for a model)."""
    import hashlib

    from mlyard.tasks.inference import fetch_model
    from mlyard.tasks.storage import Storage

    dest = settings.home_dir / "serving" / f"{name}-{version}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"
    if dest.is_dir():
        return dest
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    try:
        got = Path(fetch_model(Storage(settings), uri, tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if got != tmp:  # not fetched as one folder (e.g. served where it is): used as it is, not kept
        return got
    try:
        os.replace(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another replica of the same version fetched it first
    return dest
