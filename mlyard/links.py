"""Links between the systems a run lives in: its Prefect flow run page and its MLflow run page."""

from __future__ import annotations

from core.connection import read_state
from core.settings import Settings


def prefect_ui(settings: Settings) -> str | None:
    if settings.prefect_api_url:
        return settings.prefect_api_url.rstrip("/").removesuffix("/api")
    state = read_state(settings)
    return state.ui_url if state else None


def mlflow_ui(settings: Settings) -> str:
    uri = settings.mlflow_uri
    return uri.rstrip("/") if uri.startswith("http") else f"http://127.0.0.1:{settings.mlflow_ui_port}"


def links(settings: Settings, flow_run_id: str | None, mlflow_run_id: str | None = None,
          experiment_id: str | None = None) -> dict[str, str]:
    """URLs of the Prefect flow run and the MLflow run (start the MLflow UI with `mlyard ui mlflow`)."""
    out = {}
    ui = prefect_ui(settings)
    if ui and flow_run_id:
        out["prefect"] = f"{ui}/runs/flow-run/{flow_run_id}"
    if mlflow_run_id and experiment_id:
        out["mlflow"] = f"{mlflow_ui(settings)}/#/experiments/{experiment_id}/runs/{mlflow_run_id}"
    return out
