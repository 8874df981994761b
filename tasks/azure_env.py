"""The environment an Azure ML deployment names for its entry script: a conda file's pip section, or a
requirements.txt, built into a cached virtual environment of those packages alone
(tasks/environments.pip_environment, `own`: one per hash of the requirements and this Python, none of the
platform's packages in it), whose interpreter runs the script (serving/entry_host.py). The server
(serving/azure.py) runs on the platform's own packages, so a deployment may pin any version of anything.

Which file: `--conda-file` or `--requirements` when given; else, beside the entry script, the first of
conda.yaml, conda.yml, environment.yml, environment.yaml, requirements.txt. Of a conda file, the `pip:`
list is installed; `python=X.Y` is checked against the Python here (one that cannot be honoured is
reported in one line, and the script runs on this one); other conda packages are reported, not
installed (pip installs packages; list them under `pip:`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from mlyard.core.errors import SpecError, TrainingFailed

CONDA_NAMES = ("conda.yaml", "conda.yml", "environment.yml", "environment.yaml")


@dataclass
class Environment:
    source: Path | None  # the file it was read from (None: the platform's own environment)
    requirements: str = ""  # pip requirement lines
    notes: list[str] = field(default_factory=list)


def find(script: Path, conda_file: Path | None = None, requirements: Path | None = None) -> Environment:
    """The environment the deployment names (see the module)."""
    if conda_file is not None and requirements is not None:
        raise SpecError("--conda-file", str(conda_file), "either a conda file or --requirements, not both")
    for given, flag in ((conda_file, "--conda-file"), (requirements, "--requirements")):
        if given is not None and not given.is_file():
            raise SpecError(flag, str(given), "a file that exists")
    chosen = conda_file or requirements or next(
        (script.parent / n for n in (*CONDA_NAMES, "requirements.txt") if (script.parent / n).is_file()), None)
    if chosen is None:
        return Environment(None)
    if chosen is requirements or chosen.name == "requirements.txt":
        return Environment(chosen, chosen.read_text())
    return _conda(chosen)


def _conda(path: Path) -> Environment:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(path.name, "the file", f"valid YAML ({str(exc).splitlines()[0]})") from None
    deps = doc.get("dependencies") if isinstance(doc, dict) else None
    if deps is None:
        deps = []
    if not isinstance(deps, list):
        raise SpecError(f"{path.name}: dependencies", deps, "a list of packages (and a pip: list)")
    pip: list[str] = []
    conda: list[str] = []
    notes: list[str] = []
    for dep in deps:
        if isinstance(dep, dict) and "pip" in dep:
            if not isinstance(dep["pip"], list) or not all(isinstance(p, str) for p in dep["pip"]):
                raise SpecError(f"{path.name}: dependencies.pip", dep["pip"], "a list of pip requirements")
            pip += dep["pip"]
        elif isinstance(dep, str):
            name = dep.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip()
            if name == "python":
                why = _python_mismatch(dep)
                if why:
                    notes.append(f"{path.name}: {dep} cannot be honoured here: {why}")
            elif name != "pip":
                conda.append(dep)
        else:
            raise SpecError(f"{path.name}: dependencies", dep, "package strings, or a pip: list")
    if conda:
        notes.append(f"{path.name}: conda packages are not installed here ({', '.join(conda)}); list them under "
                     "pip: to have them")
    return Environment(path, "\n".join(pip) + ("\n" if pip else ""), notes)


def _python_mismatch(dep: str) -> str | None:
    """Why a conda `python...` spec is not this Python, or None when it is."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    spec = dep[len("python"):].strip()
    if not spec:
        return None
    if spec.startswith("=") and not spec.startswith("=="):  # conda's python=3.8 means 3.8.*
        spec = "==" + spec[1:] + ("" if spec.count(".") >= 2 or spec.endswith("*") else ".*")
    here = ".".join(map(str, sys.version_info[:3]))
    try:
        if SpecifierSet(spec).contains(here):
            return None
    except InvalidSpecifier:
        return f"the version {spec!r} cannot be read"
    return f"the entry script runs on Python {here}"


def python_for(env: Environment, envs_dir: Path, log: Callable[[str], None]) -> str:
    """The interpreter to run the entry script with: this one when the deployment names no packages, else
    its own environment's, built (or found in the cache). One that pip cannot build is refused in one line
    naming the requirement pip could not meet."""
    for note in env.notes:
        log(note)
    if not env.requirements.strip():
        return sys.executable
    from mlyard.tasks.environments import pip_environment

    assert env.source is not None
    try:
        return pip_environment(env.requirements, envs_dir, log, label=env.source.name, cwd=env.source.parent,
                               own=True)
    except TrainingFailed as exc:
        everything = "\n".join(exc.last_lines)
        found = re.search(r"(?:No matching distribution found for|satisfies the requirement) (\S+)", everything)
        why = f"{found.group(1)} cannot be installed" if found else exc.reason
        last = next((line for line in reversed(exc.last_lines) if line.strip()), "")
        raise SpecError(env.source.name, "its packages",
                        f"packages pip can install here ({why}; pip: {last.strip()[:300]})") from None
