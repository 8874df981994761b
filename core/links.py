"""Links between the systems a run lives in: its Prefect flow run page and its MLflow run page."""

from __future__ import annotations

from mlyard.core.connection import StackState, read_state
from mlyard.core.settings import Settings


def prefect_ui(settings: Settings) -> str | None:
    """The Prefect UI as the caller reaches it: a project member's is the front door, where they sign in
    with their key and see their projects' runs alone; the platform's own is Prefect's."""
    from mlyard.core.access import current

    if not current().admin:
        return settings.door_url
    if settings.prefect_api_url:
        return settings.prefect_api_url.rstrip("/").removesuffix("/api")
    state = read_state(settings)
    return state.ui_url if state else None


# MLflow's UI opens a link in its model-training view with this (its GenAI view otherwise, unless the
# browser chose; mlyard/mlflow_ui.py)
TRAINING_VIEW = "?workflowType=machine_learning"


def mlflow_ui(settings: Settings) -> str:
    """The MLflow UI: the tracking server's own on a cluster; here the one the stack started, else where
    it will (the port its `up` was given), whatever shell asks."""
    uri = settings.mlflow_uri
    if uri.startswith("http"):
        return uri.rstrip("/")
    state = read_state(settings)
    if state is not None and state.mlflow_ui_url:  # the one started
        return state.mlflow_ui_url
    return f"http://127.0.0.1:{mlflow_ui_port(settings, state)}"


def mlflow_ui_port(settings: Settings, state: StackState | None) -> int:
    """The MLflow UI's port: this shell's MLYARD_MLFLOW_UI_PORT when it says one, else the one the running
    stack's `up` was given (a fresh shell's default would be another stack's, or another test worker's)."""
    if "mlflow_ui_port" in settings.model_fields_set or state is None or not state.mlflow_ui_port:
        return settings.mlflow_ui_port
    return state.mlflow_ui_port


def mlflow_run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    """An MLflow run's page in the MLflow UI (`mlyard ui mlflow` starts it), in its model-training view."""
    return f"{mlflow_ui(settings)}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def links(settings: Settings, flow_run_id: str | None, mlflow_run_id: str | None = None,
          experiment_id: str | None = None) -> dict[str, str]:
    """URLs of the Prefect flow run and the MLflow run (start the MLflow UI with `mlyard ui mlflow`)."""
    out = {}
    ui = prefect_ui(settings)
    if ui and flow_run_id:
        out["prefect"] = f"{ui}/runs/flow-run/{flow_run_id}"
    if mlflow_run_id and experiment_id:
        out["mlflow"] = mlflow_run_url(settings, experiment_id, mlflow_run_id)
    return out


def model_links(settings: Settings, name: str, version: str | None = None,
                lineage: dict[str, str] | None = None) -> dict[str, str]:
    """URLs of a registered model (or one version of it) in the MLflow UI, and of the run it came from."""
    ui = mlflow_ui(settings)
    out = {"mlflow": f"{ui}/#/models/{name}" + (f"/versions/{version}" if version else "") + TRAINING_VIEW}
    if lineage and lineage.get("run_id") and lineage.get("experiment_id"):
        out["mlflow_run"] = mlflow_run_url(settings, lineage["experiment_id"], lineage["run_id"])
    return out
