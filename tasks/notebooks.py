"""Notebooks on this machine: each one's storage, token and JupyterLab process. Light on purpose (no
Prefect): the CLI's reads import it.

    <home>/notebooks/<id>/boot/     boot storage: made anew at every start (tasks/notebook_boot.py)
    <home>/notebooks/<id>/data/     data storage: kept across stop, start and reboot; cont-init.d,
                                    custom-conda-envs and the user's files
    <home>/notebooks/<id>/token     the Jupyter token (mode 0600): whoever opens the URL needs it

The process is a replica of the supervisor that `mlyard up` runs (tasks/replicas.py), in the group
`notebook:<id>`: never routed by the gateway, started again (through the boot) if it exits, stopped when
no longer wanted. Its health is Jupyter's own answer on /api.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from mlyard.core.specs.notebook import INSTANCE_TYPES, NotebookSpec

HEALTH_PATH = "api"  # under its base path: Jupyter server's version, which answers once the server serves


def base_path(notebook_id: int) -> str:
    """Where the notebook's JupyterLab serves (its base URL): the path mlyard's front door gives it
    (mlyard/door_pages.py), by id so that a renamed notebook keeps it."""
    return f"/notebooks/{notebook_id}/"


def folder(home: Any, notebook_id: int) -> Path:
    return Path(home) / "notebooks" / str(notebook_id)


def group(notebook_id: int) -> str:
    return f"notebook:{notebook_id}"


def key(notebook_id: int) -> str:
    from mlyard.tasks import replicas as files

    return files.key_of(group(notebook_id), "jupyter", notebook_id, 0)


def prepare(home: Any, notebook_id: int) -> Path:
    """The notebook's storage and token (once: a restart keeps both)."""
    root = folder(home, notebook_id)
    for sub in (root / "data" / "custom-conda-envs", root / "data" / "cont-init.d"):
        sub.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    token = root / "token"
    if not token.exists():
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return root


def nas_path(spec: NotebookSpec, nas_mounts: dict[str, Path]) -> Path | None:
    """The NAS share's folder on this machine (settings nas_mounts), which must exist; None without one."""
    from mlyard.core.errors import SpecError
    from mlyard.core.uris import parse_uri

    if spec.nas is None:
        return None
    path = parse_uri(spec.nas.uri, "nas.uri", nas_mounts=nas_mounts).path
    if path is None or not path.is_dir():
        raise SpecError("nas.uri", spec.nas.uri, f"a folder of the share that exists ({path} does not)")
    return path


def want(home: Any, notebook_id: int, spec: NotebookSpec, nas_path: Path | None) -> str:
    """Ask the supervisor for the notebook's JupyterLab (through its boot); its replica key."""
    from mlyard.tasks import replicas as files

    argv = [sys.executable, "-m", "mlyard.tasks.notebook_boot", "--folder", str(folder(home, notebook_id)),
            "--cpus", str(INSTANCE_TYPES[spec.instance_type].cpus), "--base-url", base_path(notebook_id)]
    if spec.nas and nas_path is not None:
        argv += ["--nas", f"{spec.nas.mount_name}={nas_path}"]
    k = key(notebook_id)
    files.want(home, files.Wanted(k, group(notebook_id), "jupyter", notebook_id, 0, spec.name, argv,
                                  {"MLYARD_HOME": str(home)}, routed=False,
                                  health_path=base_path(notebook_id) + HEALTH_PATH,
                                  port=port(home, notebook_id),  # its kernels run a member's code: walled in
                                  walls=[str(folder(home, notebook_id)), *([str(nas_path)] if nas_path else [])]))
    return k


def port(home: Any, notebook_id: int) -> int:
    """The notebook's port, kept in its folder so that a stop and start (and a reboot of the machine) keep
    its URL: the one it had while that is free, else a new one (MLYARD_NOTEBOOK_PORTS, or any free)."""
    import socket

    from mlyard.core.settings import Settings

    kept = folder(home, notebook_id) / "port"

    def free(p: int) -> bool:  # as a server binds it (SO_REUSEADDR: its last connections' TIME_WAIT is no bar)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
                return True
            except OSError:
                return False

    try:
        if free(had := int(kept.read_text())):
            return had
    except (OSError, ValueError):
        pass
    span = Settings().notebook_ports
    if span:
        first, last = (int(x) for x in span.split("-"))
        chosen = next((p for p in range(first, last + 1) if free(p)), None)
        if chosen is None:
            from mlyard.core.errors import StackError

            raise StackError(f"no free port left in MLYARD_NOTEBOOK_PORTS={span}: widen it, or stop a notebook")
    else:
        from mlyard.tasks.replicas import free_port

        chosen = free_port()
    kept.write_text(str(chosen))
    return chosen


def unwant(home: Any, notebook_id: int) -> str:
    from mlyard.tasks import replicas as files

    k = key(notebook_id)
    files.unwant(home, k)
    return k


def address(home: Any, notebook_id: int) -> str | None:
    """`http://127.0.0.1:PORT` of the notebook's JupyterLab, or None while it has no process."""
    from mlyard.tasks import replicas as files

    st = files.states(home).get(key(notebook_id))
    return st.url if st is not None and st.status == "RUNNING" else None


def token(home: Any, notebook_id: int) -> str:
    return (folder(home, notebook_id) / "token").read_text().strip()


def url(home: Any, notebook_id: int, with_token: bool = True) -> str | None:
    """Where the notebook's JupyterLab answers (with its token), or None while it has no process."""
    found = address(home, notebook_id)
    if found is None:
        return None
    secret = token(home, notebook_id) if with_token else ""
    return f"{found}{base_path(notebook_id)}lab" + (f"?token={secret}" if secret else "")


def healthy(home: Any, notebook_id: int) -> bool:
    """Jupyter answers on its port now."""
    from mlyard.tasks import replicas as files

    st = files.states(home).get(key(notebook_id))
    return (st is not None and st.status == "RUNNING"
            and files.probe(st.url + base_path(notebook_id) + HEALTH_PATH, 1.0) == 200)


def usage_bytes(home: Any, notebook_id: int) -> int:
    """What the data storage holds (the NAS share is not counted: it is not the notebook's)."""
    total = 0
    for dirpath, _dirs, names in os.walk(folder(home, notebook_id) / "data"):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def remove(home: Any, notebook_id: int) -> None:
    """Delete boot and data storage (a NAS share is only linked from boot storage: it stays)."""
    shutil.rmtree(folder(home, notebook_id), ignore_errors=True)


def log_path(home: Any, notebook_id: int) -> Path:
    from mlyard.tasks import replicas as files

    return files.log_path(home, key(notebook_id))
