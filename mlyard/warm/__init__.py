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
import json
import os
import sys
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
SOCKET, PIDFILE, LOCKFILE = "runner.sock", "runner.pid", "runner.lock"
DETACH = b"detach\n"  # client to child: go on without me
STOPPING = "stopping"  # in <home>/warm/ while `mlyard down` stops the stack: its runs end with it
GRACE_SECONDS = 30.0  # a child whose client vanished gets SIGTERM, then SIGKILL after this
ASK_SECONDS = 3.0  # how long a run left by its worker waits for Prefect to say whether it is being cancelled


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


def run_goes_on(home: Path, env: Mapping[str, str]) -> bool:
    """Whether the flow run of `env` goes on when its worker's process leaves it (a SIGTERM to the client,
    or the client gone: mlyard/warm/client.py): not while the stack is
    being stopped, nor when Prefect says it is being cancelled or has ended. A Prefect that does not
    answer in time cannot have cancelled it: a worker that fails while its server is away goes alone."""
    import base64
    import urllib.error
    import urllib.request

    run_id, api = env.get("PREFECT__FLOW_RUN_ID"), env.get("PREFECT_API_URL")
    if (warm_dir(home) / STOPPING).exists() or not run_id or not api or not api.startswith("http://127.0.0.1:"):
        return False
    request = urllib.request.Request(f"{api}/flow_runs/{run_id}")
    if auth := env.get("PREFECT_API_AUTH_STRING"):
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=ASK_SECONDS) as answer:  # noqa: S310 - 127.0.0.1 only
            state = (json.loads(answer.read(1 << 20)).get("state") or {}).get("type")
    except urllib.error.HTTPError as exc:
        return exc.code >= 500  # a server too busy to say; a run it does not have (404) is not there to go on
    except (OSError, ValueError):
        return True
    return state in ("SCHEDULED", "PENDING", "RUNNING")
