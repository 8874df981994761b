"""Notebooks from Python (and the CLI's `mlyard notebooks`): JupyterLab with its own storage, started,
stopped, rebooted and deleted by flow runs of `notebook/notebook-local` (on a cluster `notebook-kubernetes`:
core/names.on_this_platform).

    import mlyard.notebooks as notebooks

    notebooks.create({"name": "explore", "instance_type": "cpu-2"}, wait=True)   # ACTIVE (HEALTHY)
    notebooks.open_url("explore")        # http://127.0.0.1:PORT/notebooks/ID/lab?token=...: only with the token
    notebooks.stop("explore", wait=True)     # STOPPED: data storage kept
    notebooks.set_type("explore", "cpu-4")   # only while stopped, within the core type
    notebooks.start("explore", wait=True)    # the start-up scripts run again, the kernels come back
    notebooks.delete("explore", wait=True)   # boot and data storage go; a NAS share never

Everything that can be checked is checked before a notebook is recorded or an action queued: its spec,
its NAS share, whether its status allows the action.

A notebook belongs to the project it was made in and to the user who made it (an editor there): the
project's members see it listed, but only its user (and admins) open it, since its JupyterLab's token is
the way in, and only they stop, start, reboot, rename or retype it; its user or the project's owner
deletes it. A team member's call (their key) is made by the platform, through the mlyard API, as them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from mlyard.api import load as _spec
from mlyard.core.access import current, run_tags
from mlyard.core.connection import connect
from mlyard.core.environment import install_notebook_image
from mlyard.core.errors import HttpError, NotebookNotFound, RunFailed, SpecError
from mlyard.core.names import FLOW_NOTEBOOK, deployment
from mlyard.core.settings import Settings
from mlyard.core.specs.notebook import (
    ACTIVE,
    CREATE_REQUESTED,
    FAILED,
    HEALTHY,
    IN_PROGRESS,
    INSTANCE_TYPES,
    LOCAL_IMAGE,
    UNHEALTHY,
    NotebookSpec,
)
from mlyard.runs import visible_projects
from mlyard.tasks import notebooks as local
from mlyard.teams import acting_editor, acting_or_none, audited
from mlyard.warm_api import member_api, member_command, post

BUSY = (CREATE_REQUESTED, *IN_PROGRESS.values())


def notebook_store(settings: Settings):
    from mlyard.registry.catalog import shared
    from mlyard.registry.notebooks import Notebooks

    return Notebooks(shared(settings.catalog_db_url))


def _submit(record: Any, action: str) -> str:
    """The action's flow run, tagged with the notebook's project and user (its logs are theirs)."""
    from mlyard.tasks.orchestration import submit

    tags = [f"mlyard.notebook:{record.name}", *run_tags(record.project, record.owner or current().name)]
    return str(submit(deployment(FLOW_NOTEBOOK), {"spec": {"notebook": record.name, "action": action}}, None, tags).id)


def in_reach(store: Any, name: str, action: str | None = None, deleting: bool = False) -> Any:
    """The notebook `name` for the caller: one of a project they have no role in does not exist for them; an
    `action` on it (an editor's) is its user's alone, or an admin's (a delete: also the project's owner's)."""
    record, actor = store.get(name), current()
    actor.need(record.project, "editor" if action else "viewer", action or "reading a notebook",
               lambda: NotebookNotFound(name))
    theirs = actor.admin or record.owner == actor.name or (deleting and actor.role(record.project) == "owner")
    if action and not theirs:
        raise HttpError(403, f"{action} is for its user and admins: notebook {name!r} is "
                        f"{record.owner or 'the platform'}'s, and its JupyterLab answers its user alone")
    return record


def notebook_status(settings: Settings, record: Any) -> str:
    """The stored status, with ACTIVE shown as Jupyter's answer now: HEALTHY or UNHEALTHY (on a cluster:
    the readiness of its pod, whose probe asks Jupyter)."""
    if record.status != ACTIVE:
        return record.status
    if record.spec.get("image", LOCAL_IMAGE) != LOCAL_IMAGE:
        return HEALTHY if _ready_on_cluster(settings, record) else UNHEALTHY
    return HEALTHY if local.healthy(settings.home_dir, record.id) else UNHEALTHY


def _ready_on_cluster(settings: Settings, record: Any) -> bool:
    try:
        import kubernetes.client

        from mlyard.tasks.kubernetes import cluster_client
        from mlyard.tasks.notebook_cluster import object_name

        sts = kubernetes.client.AppsV1Api(cluster_client("image", record.spec["image"])).read_namespaced_stateful_set(
            object_name(record.id), settings.kube_namespace)
        return bool(sts.status and sts.status.ready_replicas)
    except Exception:  # noqa: BLE001 - the cluster does not answer, or the object is gone: not healthy
        return False


def _view(settings: Settings, record: Any) -> dict[str, Any]:
    spec, kind = record.spec, INSTANCE_TYPES[record.spec["instance_type"]]
    status = notebook_status(settings, record)
    return {"name": record.name, "project": record.project, "owner": record.owner, "status": status,
            "reason": record.reason,
            "description": spec.get("description", ""), "image": spec.get("image", LOCAL_IMAGE),
            "instance_type": kind.name, "core_type": kind.core_type, "cpus": kind.cpus, "memory_gb": kind.memory_gb,
            "gpus": kind.gpus, "boot_storage_gb": spec["boot_storage_gb"], "data_storage_gb": spec["data_storage_gb"],
            "data_used_mb": round(local.usage_bytes(settings.home_dir, record.id) / 2**20, 1),
            "nas": spec.get("nas"),
            "url": door_url(settings, record) if status == HEALTHY else None,
            "flow_run_id": record.flow_run_id, "created_at": record.created_at.isoformat(),
            "updated_at": record.updated_at.isoformat()}


def upstream(settings: Settings, record: Any) -> str | None:
    """Where the notebook's JupyterLab listens (`http://host:port`), or None while it does not run."""
    if record.spec.get("image", LOCAL_IMAGE) == LOCAL_IMAGE:
        return local.address(settings.home_dir, record.id)
    from mlyard.tasks.notebook_cluster import object_name

    return f"http://{object_name(record.id)}.{settings.kube_namespace}.svc"  # its Service, port 80


def door_url(settings: Settings, record: Any) -> str:
    """The notebook's JupyterLab through mlyard's front door, which signs its user in (mlyard/door_pages.py)."""
    return f"{settings.door_url}{local.base_path(record.id)}lab"


def token(settings: Settings, record: Any) -> str:
    """The notebook's JupyterLab token: on a cluster derived from the platform's credential (as its flow
    wrote it into the notebook's Secret), on this machine kept in its folder."""
    if record.spec.get("image", LOCAL_IMAGE) != LOCAL_IMAGE:
        from mlyard.tasks.notebook_steps import cluster_token

        return cluster_token(settings, record.id, record.created_at.isoformat())
    return local.token(settings.home_dir, record.id)


def _url(settings: Settings, record: Any, with_token: bool = False) -> str | None:
    """The notebook's JupyterLab itself, with its token: the way in that needs no sign-in."""
    found = upstream(settings, record)
    token_query = f"?token={token(settings, record)}" if with_token else ""
    return f"{found}{local.base_path(record.id)}lab{token_query}" if found else None


def _wait(settings: Settings, name: str, run_id: str, timeout_seconds: float) -> dict[str, Any] | None:
    """Until the action's run ends (the notebook leaves its IN PROGRESS status, or is gone); a run that
    ended without saying so (killed, or never started) sets the action's FAILED status. The view, or
    None once deleted."""
    from mlyard.rag_checks import flow_run_state

    store = notebook_store(settings)
    deadline, checked = time.monotonic() + timeout_seconds, time.monotonic()
    while True:
        try:
            record = store.get(name)
        except NotebookNotFound:
            return None
        if record.status not in BUSY:
            view = _view(settings, record)
            if view["status"] in FAILED.values():
                raise RunFailed(view["status"], run_id, view["reason"])
            return view
        if time.monotonic() - checked > 5:  # has the run ended without saying so?
            checked = time.monotonic()
            ended, message = flow_run_state(run_id)
            if ended in ("CRASHED", "FAILED", "CANCELLED") and store.get(name).status in BUSY:
                action = next((a for a, s in IN_PROGRESS.items() if s == record.status), "create")
                store.set_status(name, FAILED[action], f"its run {run_id} ended {ended}" + (f": {message}" if message else ""))
                continue
        if time.monotonic() > deadline:
            raise RunFailed(record.status, run_id, f"still {record.status} after {timeout_seconds:.0f} s")
        time.sleep(0.3)


def create(spec: NotebookSpec | dict | str | Path, *, sets: dict[str, Any] | None = None, wait: bool = False,
           timeout_seconds: float = 600) -> dict[str, Any]:
    """Record a notebook (CREATE REQUESTED) in the project the caller acts in, as theirs, and queue its
    creation; with `wait`, until it is ACTIVE."""
    nb = _spec(NotebookSpec, spec, sets)
    if (made := member_command("notebooks_create", spec=nb.model_dump(mode="json"))) is not None:
        return (_member_wait(nb.name, made, timeout_seconds) or {}) if wait else made
    return _create(spec=nb, wait=wait, timeout_seconds=timeout_seconds)


@audited("notebook.create", lambda a: f"notebook {a['spec'].name}", lambda a: acting_or_none(current()))
def _create(spec: NotebookSpec, wait: bool, timeout_seconds: float) -> dict[str, Any]:
    nb, actor = spec, current()
    project = acting_editor("creating a notebook")
    if nb.nas is not None and not actor.admin:
        raise SpecError("nas", nb.nas, "nothing: a member's notebook keeps its files in its own data storage (a NAS "
                        "share of the platform's machine is an admin's to mount)")
    settings = connect()
    installed = install_notebook_image()
    if nb.image == LOCAL_IMAGE and installed:  # on a cluster install there is no `python` of this machine
        nb = nb.model_copy(update={"image": installed})
    if nb.image != LOCAL_IMAGE:  # a StatefulSet on the cluster, a cluster configured
        from mlyard.tasks.kubernetes import cluster_client

        if nb.image != installed:  # not the install's own (values.images.notebook, its pull Secrets): a registered one
            from mlyard.tasks.registry_secrets import images

            store_images = images(settings)
            if not actor.admin:  # a member's notebook runs an image of their project, pulled with its own login
                store_images.resolve(nb.image, "image", project)
            if store_images.get_image(nb.image).kind != "notebook":  # ImageNotFound names `mlyard images list`
                raise SpecError("image", nb.image, "a notebook image (mlyard images list: kind notebook), or "
                                                   f"'{LOCAL_IMAGE}' for this machine's Python")
        cluster_client("image", nb.image)
    else:
        if INSTANCE_TYPES[nb.instance_type].gpus:
            raise SpecError("instance_type", nb.instance_type, "a CPU type on this machine (it has no GPU): "
                            + ", ".join(t for t, v in INSTANCE_TYPES.items() if not v.gpus)
                            + "; a GPU type runs a registered notebook image on a cluster")
        local.nas_path(nb, settings.nas_mounts)
    store = notebook_store(settings)
    record = store.create(nb.name, nb.model_dump(mode="json"), project, actor.name)
    try:
        run_id = _submit(record, "create")
    except Exception:
        store.remove(nb.name)  # nothing half-made: no run, no record
        raise
    store.set_run(nb.name, run_id)
    if wait:
        return _wait(settings, nb.name, run_id, timeout_seconds) or {}
    return {**_view(settings, store.get(nb.name)), "flow_run_id": run_id}


def _member_wait(name: str, view: dict[str, Any], timeout_seconds: float) -> dict[str, Any] | None:
    """A team member's wait for their action's end, asked of the platform (None once deleted)."""
    url, deadline = member_api(), time.monotonic() + timeout_seconds
    while view["status"] in BUSY:
        if time.monotonic() > deadline:
            raise RunFailed(view["status"], view.get("flow_run_id") or "", f"still {view['status']} after "
                                                                           f"{timeout_seconds:.0f} s")
        time.sleep(0.5)
        try:
            view = post(url or "", "/v1/queries/notebooks_show", {"name": name})
        except NotebookNotFound:
            return None
    if view["status"] in FAILED.values():
        raise RunFailed(view["status"], view.get("flow_run_id") or "", view.get("reason", ""))
    return view


def _act(name: str, action: str, wait: bool, timeout_seconds: float) -> dict[str, Any] | None:
    if (made := member_command(f"notebooks_{action}", name=name)) is not None:
        return _member_wait(name, made, timeout_seconds) if wait else made
    return _act_here(name=name, action=action, wait=wait, timeout_seconds=timeout_seconds)


@audited("notebook.act", lambda a: f"notebook {a['name']} {a['action']}", lambda a: acting_or_none(current()))
def _act_here(name: str, action: str, wait: bool, timeout_seconds: float) -> dict[str, Any] | None:
    settings = connect()
    store = notebook_store(settings)
    record = in_reach(store, name, f"{_doing(action)} a notebook", deleting=action == "delete")
    store.begin(name, action)  # refused here when the status does not allow it
    try:
        run_id = _submit(record, action)
    except Exception:
        store.set_status(name, record.status, "")
        raise
    store.set_run(name, run_id)
    if wait:
        return _wait(settings, name, run_id, timeout_seconds)
    return {**_view(settings, store.get(name)), "flow_run_id": run_id}


def _doing(action: str) -> str:
    return {"stop": "stopping", "start": "starting", "reboot": "rebooting", "delete": "deleting"}[action]


def stop(name: str, *, wait: bool = False, timeout_seconds: float = 120) -> dict[str, Any]:
    """Stop the notebook's JupyterLab (STOPPED); its data storage stays."""
    return _act(name, "stop", wait, timeout_seconds) or {}


def start(name: str, *, wait: bool = False, timeout_seconds: float = 600) -> dict[str, Any]:
    """Start a stopped notebook: boot storage anew, the start-up scripts, the kernels, JupyterLab."""
    return _act(name, "start", wait, timeout_seconds) or {}


def reboot(name: str, *, wait: bool = False, timeout_seconds: float = 600) -> dict[str, Any]:
    """Stop and start an ACTIVE notebook (when Jupyter is unhealthy or does not answer)."""
    return _act(name, "reboot", wait, timeout_seconds) or {}


def delete(name: str, *, wait: bool = False, timeout_seconds: float = 120) -> dict[str, Any]:
    """Delete the notebook with its boot and data storage (a NAS share stays)."""
    view = _act(name, "delete", wait, timeout_seconds)
    return view if view is not None else {"name": name, "deleted": True}


def rename(name: str, new_name: str) -> dict[str, Any]:
    if (made := member_command("notebooks_rename", name=name, new_name=new_name)) is not None:
        return made
    return _rename(name=name, new_name=new_name)


@audited("notebook.rename", lambda a: f"notebook {a['name']}", lambda a: acting_or_none(current()))
def _rename(name: str, new_name: str) -> dict[str, Any]:
    from mlyard.core.specs.common import NAME_PATTERN

    if not re.match(NAME_PATTERN, new_name):
        raise SpecError("name", new_name, "lowercase letters, digits and '-', at most 50")
    settings = connect()
    store = notebook_store(settings)
    in_reach(store, name, "renaming a notebook")
    return _view(settings, store.rename(name, new_name))


def set_type(name: str, instance_type: str) -> dict[str, Any]:
    """Change the instance type of a STOPPED notebook (same core type); it applies at its next start."""
    if (made := member_command("notebooks_set_type", name=name, instance_type=instance_type)) is not None:
        return made
    return _set_type(name=name, instance_type=instance_type)


@audited("notebook.set_type", lambda a: f"notebook {a['name']}", lambda a: acting_or_none(current()))
def _set_type(name: str, instance_type: str) -> dict[str, Any]:
    settings = connect()
    store = notebook_store(settings)
    in_reach(store, name, "changing a notebook's type")
    return _view(settings, store.set_instance_type(name, instance_type))


def list_notebooks() -> list[dict[str, Any]]:
    """The notebooks of the caller's projects."""
    if (url := member_api()) is not None:
        return post(url, "/v1/queries/notebooks_list", {})
    settings = connect()
    return [_view(settings, r) for r in notebook_store(settings).all(visible_projects())]


def show(name: str) -> dict[str, Any]:
    """A notebook; its files' places and start-up log for its user (and admins) alone."""
    if (url := member_api()) is not None:
        return post(url, "/v1/queries/notebooks_show", {"name": name})
    settings = connect()
    record = in_reach(notebook_store(settings), name)
    view = _view(settings, record)
    actor = current()
    if actor.admin or record.owner == actor.name:
        data = local.folder(settings.home_dir, record.id) / "data"
        init_log = data / "cont-init.output"
        view.update({"data_dir": str(data), "log": str(local.log_path(settings.home_dir, record.id)),
                     "start_up_log": init_log.read_text(errors="replace") if init_log.exists() else None})
    return view


def open_url(name: str) -> str:
    """The notebook's JupyterLab for its user (and admins) alone: through mlyard's front door, where they sign in
    (the stack's owner, an admin on their own machine, gets it with its token instead, as ever)."""
    if (url := member_api()) is not None:
        return post(url, "/v1/queries/notebooks_open", {"name": name})["url"]
    settings = connect()
    record = in_reach(notebook_store(settings), name, "opening a notebook")
    if notebook_status(settings, record) != HEALTHY:
        raise SpecError("notebook", name, f"an ACTIVE (HEALTHY) notebook (it is {notebook_status(settings, record)}; "
                                          f"start it with `mlyard notebooks start {name}`)")
    if not current().admin:
        return door_url(settings, record)
    return _url(settings, record, with_token=True) or ""


def types() -> list[dict[str, Any]]:
    return [{"name": t.name, "core_type": t.core_type, "cpus": t.cpus, "memory_gb": t.memory_gb, "gpus": t.gpus}
            for t in INSTANCE_TYPES.values()]

