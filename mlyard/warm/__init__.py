"""Warm starts for the local process pool (DESIGN §11).

A cold flow run pays for `import prefect`, MLflow, SQLAlchemy and the flow's modules (3-6 s here)
before its first line. The warm runner (`server.py`) pays for them once: it imports everything, then
forks one child per flow run, like a forkserver. The pool's `command` job variable runs the small
client (`client.py`) instead of `python -m prefect.engine`; the client hands the runner its
environment, working directory, umask and standard streams (SCM_RIGHTS over a Unix socket), relays
the child's exit status, and forwards SIGTERM/SIGINT to the child's process group. Without a runner
(or with one whose code is stale) the client starts one for the next run and runs this one cold.

Files, all under `<home>/warm/` (the folder is private to the user): `runner.sock`, `runner.pid`,
`runner.lock` (held by the one live runner); its log is `<home>/logs/warm-runner.log`.

This module is imported by the client on every flow run: it imports only the standard library.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
SOCKET, PIDFILE, LOCKFILE = "runner.sock", "runner.pid", "runner.lock"
GRACE_SECONDS = 30.0  # a child whose client vanished gets SIGTERM, then SIGKILL after this


def loaded_project_files() -> list[str]:
    """The files of the project's modules this process has imported: what would run stale if changed."""
    root = str(PROJECT_ROOT) + os.sep
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    return sorted(f for f in files if f and f.startswith(root) and os.sep + ".venv" + os.sep not in f)


def code_fingerprint(files: list[str]) -> str:
    """A digest of each file's path, size and modification time (about 1 ms for 300 files)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0gone\n".encode())
    return digest.hexdigest()


def warm_dir(home: Path) -> Path:
    return home / "warm"


def runner_pid(home: Path) -> int | None:
    """The pid of the live warm runner of this home, or None."""
    try:
        pid = int((warm_dir(home) / PIDFILE).read_text())
        with open(f"/proc/{pid}/stat") as fh:  # a zombie (killed, not yet reaped) is not alive
            alive = fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive else None
