"""The notebook flow's steps (flows/notebook.py): a notebook's JupyterLab started and stopped through the
replica supervisor, and its storage deleted. The files and processes themselves: tasks/notebooks.py."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.errors import ReplicaFailed
from core.specs.notebook import NotebookSpec
from tasks import notebooks as local
from tasks import replicas as files

START_TIMEOUT = 300.0  # the start-up scripts run first: give them time
STOP_TIMEOUT = 30.0


@task(name="start-jupyter", cache_policy=NO_CACHE)
def start_jupyter(home: Path, notebook_id: int, spec: NotebookSpec, nas_mounts: dict[str, Path],
                  create: bool = False) -> str:
    """Storage (kept), then JupyterLab through its boot; its URL (without the token) once Jupyter answers."""
    nas = local.nas_path(spec, nas_mounts)
    local.prepare(home, notebook_id)
    key = local.want(home, notebook_id, spec, nas)
    try:
        files.wait_healthy(home, [key], timeout=START_TIMEOUT)
    except ReplicaFailed as exc:
        last = [line for line in str(exc).splitlines()[1:] if line.strip()][-1:] or [str(exc)]
        init_log = local.folder(home, notebook_id) / "data" / "cont-init.output"
        raise ReplicaFailed(f"JupyterLab did not start: {last[0].strip()} (its log: {local.log_path(home, notebook_id)}"
                            + (f"; start-up scripts: {init_log}" if init_log.exists() else "") + ")") from None
    url = local.url(home, notebook_id, with_token=False) or ""
    get_run_logger().info("JupyterLab answers on %s", url)
    return url


@task(name="stop-jupyter", cache_policy=NO_CACHE)
def stop_jupyter(home: Path, notebook_id: int) -> None:
    """The notebook's process ends (the supervisor stops its process group)."""
    key = local.unwant(home, notebook_id)
    files.wait_stopped(home, [key], timeout=STOP_TIMEOUT)


@task(name="delete-storage", cache_policy=NO_CACHE)
def delete_storage(home: Path, notebook_id: int) -> None:
    local.remove(home, notebook_id)
