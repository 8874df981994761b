"""Every action on a notebook is one run of this flow (`notebook/notebook-local`): create, stop, start, reboot,
delete. The front door records the notebook (and moves it to the action's IN PROGRESS status, which
refuses an action its status cannot follow) before it queues the run; a run started from the Prefect
UI makes that move itself.

1. The action's IN PROGRESS status (CREATE IN PROGRESS, STOP IN PROGRESS, ...).
2. Its work: a notebook of a registered image is a StatefulSet on the Kubernetes cluster
   (tasks/notebook_cluster.py: applied at 1 replica, at 0 to stop; its pod deleted to reboot; every
   object and the data storage's claim deleted). One of `python` runs on this machine:
   - create: the storage and the token, then JupyterLab through its boot, until Jupyter answers;
   - stop: the process ends (boot storage goes at the next start; data storage stays);
   - start: JupyterLab through its boot (start-up scripts, kernels), until Jupyter answers;
   - reboot: stop, then start;
   - delete: stop, then boot and data storage are deleted (a NAS share never), then the record.
3. The new status: ACTIVE (shown HEALTHY or UNHEALTHY from Jupyter's answer), STOPPED, or gone; on any
   failure the action's FAILED status with the reason, and no process left behind.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from mlyard.core.errors import Protected
from mlyard.core.names import FLOW_NOTEBOOK
from mlyard.core.settings import Settings
from mlyard.core.specs.notebook import ACTIVE, FAILED, IN_PROGRESS, STOPPED, NotebookAction, NotebookSpec
from mlyard.registry.catalog import Catalog
from mlyard.registry.notebooks import Notebooks
from mlyard.tasks.logrecords import install
from mlyard.tasks.notebook_steps import (
    apply_on_cluster,
    delete_on_cluster,
    delete_storage,
    on_cluster,
    reboot_on_cluster,
    start_jupyter,
    stop_jupyter,
)
from mlyard.tasks.orchestration import run_name


class NotebookResult(BaseModel):
    notebook: str
    action: str
    status: str = Field(description="ACTIVE, STOPPED or DELETED; the action's FAILED status raises instead.")


@flow(name=FLOW_NOTEBOOK, flow_run_name=run_name(FLOW_NOTEBOOK),
      description="Create, stop, start, reboot or delete a JupyterLab notebook (mlyard notebooks ...).")
def notebook(spec: NotebookAction) -> NotebookResult:
    settings = Settings()
    install(settings)  # what the run logs, also as structured records (`mlyard logs`), as Platform does
    notebooks = Notebooks(Catalog(settings.catalog_db_url))
    home, logger = settings.home_dir, get_run_logger()
    run_id = str(flow_run.get_id() or "") or None

    # 1. IN PROGRESS.
    record = notebooks.get(spec.notebook)
    if record.status != IN_PROGRESS[spec.action]:
        if spec.action == "create":
            if record.status != "CREATE REQUESTED":
                raise Protected(f"notebook {spec.notebook!r} is {record.status}: it was created already")
        else:
            notebooks.begin(spec.notebook, spec.action)
    record = notebooks.set_status(spec.notebook, IN_PROGRESS[spec.action], flow_run_id=run_id)
    nb = NotebookSpec.model_validate(record.spec)

    # 2. The work; 3. the new status.
    try:
        if on_cluster(nb):  # a registered image: a StatefulSet on the cluster
            if spec.action == "delete":
                delete_on_cluster(settings, record.name, record.id, nb)
                notebooks.remove(spec.notebook)
                return NotebookResult(notebook=spec.notebook, action=spec.action, status="DELETED")
            if spec.action == "reboot":
                reboot_on_cluster(settings, record.name, record.id, nb)
            else:
                apply_on_cluster(settings, record.name, record.id, nb, 0 if spec.action == "stop" else 1,
                                 record.created_at.isoformat())
            status = STOPPED if spec.action == "stop" else ACTIVE
            notebooks.set_status(spec.notebook, status)
            return NotebookResult(notebook=spec.notebook, action=spec.action, status=status)
        if spec.action in ("stop", "reboot", "delete"):
            stop_jupyter(home, record.id)
        if spec.action == "delete":
            delete_storage(home, record.id)
            notebooks.remove(spec.notebook)
            logger.info("notebook %s deleted with its boot and data storage", spec.notebook)
            return NotebookResult(notebook=spec.notebook, action=spec.action, status="DELETED")
        if spec.action in ("create", "start", "reboot"):
            url = start_jupyter(home, record.id, nb, settings.nas_mounts)
            logger.info("notebook %s is ACTIVE: %s (with its token: mlyard notebooks open %s)", spec.notebook, url,
                        spec.notebook)
            notebooks.set_status(spec.notebook, ACTIVE)
            return NotebookResult(notebook=spec.notebook, action=spec.action, status=ACTIVE)
        notebooks.set_status(spec.notebook, STOPPED, "stopped: its data storage is kept; start it again with "
                             f"`mlyard notebooks start {spec.notebook}`")
        return NotebookResult(notebook=spec.notebook, action=spec.action, status=STOPPED)
    except BaseException as exc:
        if spec.action in ("create", "start", "reboot") and not on_cluster(nb):
            try:
                stop_jupyter.fn(home, record.id)  # no process of a failed start is left running
            except Exception as again:
                logger.warning("could not stop notebook %s after the failure: %s", spec.notebook, again)
        reason = str(exc) if not isinstance(exc, (KeyboardInterrupt, SystemExit)) else f"stopped ({type(exc).__name__})"
        notebooks.set_status(spec.notebook, FAILED[spec.action], reason)
        raise
