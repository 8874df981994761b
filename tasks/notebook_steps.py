"""The notebook flow's steps (flows/notebook.py): a notebook's JupyterLab started and stopped through the
replica supervisor, and its storage deleted. The files and processes themselves: tasks/notebooks.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlyard.core.errors import ReplicaFailed
from mlyard.core.specs.notebook import NotebookSpec
from mlyard.tasks import notebooks as local
from mlyard.tasks import replicas as files

START_TIMEOUT = 300.0  # the start-up scripts run first: give them time
STOP_TIMEOUT = 30.0


@task(name="start-jupyter", cache_policy=NO_CACHE)
def start_jupyter(home: Path, notebook_id: int, spec: NotebookSpec, nas_mounts: dict[str, Path]) -> str:
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


def on_cluster(spec: NotebookSpec) -> bool:
    """A notebook of a registered image runs on the Kubernetes cluster; `python` on this machine."""
    from mlyard.core.specs.notebook import LOCAL_IMAGE

    return spec.image != LOCAL_IMAGE


def cluster_token(settings: Any, notebook_id: int, created: str) -> str:
    """The JupyterLab token on the cluster of the notebook `notebook_id` made at `created` (its record's
    created_at, ISO): core/connection.notebook_token."""
    from mlyard.core.connection import internal_token, notebook_token
    from mlyard.core.errors import SpecError

    internal = internal_token(settings)
    if not internal:
        raise SpecError("internal_token", None, "the platform's internal credential (MLYARD_INTERNAL_TOKEN, in the "
                        "mlyard-settings Secret on a cluster): a notebook's token is derived from it")
    return notebook_token(internal, notebook_id, created)


@task(name="apply-notebook", cache_policy=NO_CACHE)
def apply_on_cluster(settings: Any, name: str, notebook_id: int, spec: NotebookSpec, replicas: int,
                     created: str) -> str:
    """Render, validate and apply the notebook's objects (its StatefulSet at `replicas`: 1 running, 0
    stopped; its token in its Secret, derived here so that no task parameter holds it); its Service's address."""
    from mlyard.core.environment import install_pull_secrets
    from mlyard.tasks import notebook_cluster as nbk
    from mlyard.tasks.kubernetes import cluster_client
    from mlyard.tasks.registry_secrets import ensure_pull_secret, images

    resolved = images(settings).resolve(spec.image)
    ensure_pull_secret(resolved, settings)
    token = cluster_token(settings, notebook_id, created)
    manifests = nbk.render(name, notebook_id, spec, resolved.address, token, namespace=settings.kube_namespace,
                           replicas=replicas, pull_secrets=((resolved.pull_secret,) if resolved.pull_secret else ())
                           + install_pull_secrets())
    done = nbk.apply(cluster_client("image", spec.image), manifests, settings.kube_namespace)
    get_run_logger().info("notebook %s on the cluster: %s", name, done)
    return f"http://{nbk.object_name(notebook_id)}.{settings.kube_namespace}.svc/lab"


@task(name="reboot-notebook-pod", cache_policy=NO_CACHE)
def reboot_on_cluster(settings: Any, name: str, notebook_id: int, spec: NotebookSpec) -> None:
    from mlyard.tasks import notebook_cluster as nbk
    from mlyard.tasks.kubernetes import cluster_client

    nbk.reboot(cluster_client("image", spec.image), name, notebook_id, settings.kube_namespace)


@task(name="delete-notebook-objects", cache_policy=NO_CACHE)
def delete_on_cluster(settings: Any, name: str, notebook_id: int, spec: NotebookSpec) -> list[str]:
    from mlyard.tasks import notebook_cluster as nbk
    from mlyard.tasks.kubernetes import cluster_client

    return nbk.delete(cluster_client("image", spec.image), name, notebook_id, settings.kube_namespace)
