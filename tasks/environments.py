"""The environments user code runs in: an algorithm's requirements.txt, or a served entry script's
deployment environment, each built once into a cached virtual environment (over the platform's packages, or of its own alone)."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Callable

from mlyard.core.errors import TrainingFailed
from mlyard.tasks.launch import TAIL_LINES


def requirements_env(source: Path, envs_dir: Path, log: Callable[[str], None] = print, project: str = "") -> str:
    """The Python to run `source`'s entry point with.

    Without a requirements.txt that is the platform's own interpreter. With one, it is a virtual
    environment that sees the platform's packages (through a .pth file, behind its own) but
    installs into its own directory, cached by `project` and the hash of requirements.txt: a second
    training of the project reuses it, another project's never does.
    """
    req = source / "requirements.txt"
    if not req.is_file() or not req.read_text().strip():
        return sys.executable
    return pip_environment(req.read_text(), envs_dir, log, cwd=source, project=project)


def pip_environment(requirements: str, envs_dir: Path, log: Callable[[str], None] = print,
                    label: str = "requirements.txt", cwd: Path | None = None, project: str = "",
                    own: bool = False) -> str:
    """The python of a virtual environment holding `requirements` (pip's requirement lines), built once per
    hash of them and this Python (`requirements_env`'s rules); `label` names them in what it logs and in a
    failure. It sees the platform's packages behind its own, or with `own` none of them (a served entry
    script's: it gets exactly what its deployment names, at any version, and the platform's server runs
    apart from it, serving/entry_host.py). pip (and what it builds: a package's setup.py is code a user
    brought) runs in a sandbox that writes only the environment; the code run with it later gets the
    environment read-only (tasks/sandbox.py), so no run can change the next one's."""
    digest = hashlib.sha256(f"{project}\0{'own' if own else ''}\0".encode() + requirements.encode()
                            + sys.version.encode()).hexdigest()[:16]
    target = envs_dir / digest
    python = target / "bin" / "python"
    ready = target / ".ready"
    envs_dir.mkdir(parents=True, exist_ok=True)
    with open(envs_dir / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel trials share one build
        if ready.exists():
            log(f"{label}: reusing environment {target}")
            return str(python)
        shutil.rmtree(target, ignore_errors=True)  # a half-built environment from a crash
        log(f"{label}: building environment {target}")
        try:
            _run_checked([sys.executable, "-m", "venv", "--without-pip", str(target)])
            if not own:  # the platform's own packages stay visible, behind the environment's own (a .pth is read last)
                own_site = target / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
                (own_site / "mlyard-platform.pth").write_text("\n".join(site.getsitepackages()) + "\n")
            wanted = target / "requirements.txt"
            wanted.write_text(requirements)
            out = _run_checked(_sandboxed([sys.executable, "-m", "pip", "--python", str(python), "install",
                                           "--disable-pip-version-check", "--no-input", "-r", str(wanted)],
                                          target, cwd), cwd=cwd, label=label, env=_pip_env(target))
        except TrainingFailed:
            shutil.rmtree(target, ignore_errors=True)
            raise
        for line in out.splitlines()[-3:]:
            log(line)
        shutil.rmtree(target / ".tmp", ignore_errors=True)
        ready.write_text(requirements)
    return str(python)


def _sandboxed(argv: list[str], target: Path, cwd: Path | None) -> list[str]:
    """pip's command in a sandbox (Settings.sandbox) that reads the requirements' folder, the Pythons and
    pip's local wheels, writes only the environment and its own temporary folder, and has the network
    (the package index); as it is where no sandbox can start (and `sandbox` is not required)."""
    from mlyard.core.environment import pip_find_links
    from mlyard.core.settings import Settings
    from mlyard.tasks import sandbox
    from mlyard.tasks.confinement import walled_or_fail

    walled, _ = walled_or_fail(Settings().sandbox, "pip")
    if not walled:
        return argv
    tmp = target / ".tmp"
    tmp.mkdir(exist_ok=True)
    links = pip_find_links()
    walls = sandbox.Walls(read=(*([str(cwd)] if cwd else []), *links, *sandbox.interpreter_folders(sys.executable)),
                          write=(str(target),), tmp=str(tmp), network=True, chdir=str(cwd) if cwd else None)
    return sandbox.wrap(argv, walls)


def _pip_env(target: Path) -> dict[str, str] | None:
    """pip's environment in its sandbox: no credential of the platform's, its HOME and cache its own."""
    import os

    from mlyard.tasks.launch import script_environment

    tmp = str(target / ".tmp")
    return {**script_environment(os.environ), "HOME": tmp, "TMPDIR": tmp, "PIP_CACHE_DIR": f"{tmp}/pip-cache"}


def _run_checked(argv: list[str], cwd: Path | None = None, label: str = "requirements.txt",
                 env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        everything = (proc.stdout + proc.stderr).strip().splitlines()
        raise TrainingFailed(f"installing {label} failed (exit code {proc.returncode})",
                             proc.returncode, everything[-TAIL_LINES:])
    return proc.stdout
