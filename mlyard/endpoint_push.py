"""A team member's push of a folder to an endpoint (`mlyard endpoints deploy ENDPOINT --sync DIR` with
MLYARD_API_KEY): the folder goes to their project's storage through the mlyard API, the platform checks it
as on its own machine and pushes it in a run of sync-endpoint-code made as them (mlyard/member_runs.py);
their command follows the run and, once it has made the new version, writes the endpoint's URL and that
version into their own inference.config.json (a push that failed writes nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlyard.core.names import FLOW_SYNC_ENDPOINT, deployment
from mlyard.core.settings import Settings
from mlyard.core.specs.endpoint import SyncSpec


def as_member(spec: SyncSpec, wait: bool = True, timeout_seconds: float = 3600) -> dict[str, Any]:
    """The member's push: the run's view; with `wait`, followed to its end, and the config file written here
    with the version it made (RunFailed with the run's reason if it failed; nothing is written then)."""
    import time

    from mlyard.core.errors import RunFailed
    from mlyard.submit import submit
    from mlyard.tasks.inference_config import CONFIG, folder_kind, write_config
    from mlyard.uploads import for_cluster
    from mlyard.warm_api import post, signed_in_api

    settings = Settings()
    config = Path(spec.config) if spec.config else Path(spec.source) / CONFIG
    bare = spec.model_copy(update={"config": None})  # the platform keeps its copy in the project's storage
    area = post(signed_in_api(settings), "/v1/queries/run_check", {"flow": FLOW_SYNC_ENDPOINT,
                                                                   "spec": bare.model_dump(mode="json")})
    sent = for_cluster(bare, settings, area=area["storage"])
    made = submit(deployment(FLOW_SYNC_ENDPOINT), {"spec": sent.model_dump(mode="json")})
    view: dict[str, Any] = {"flow_run_id": made["id"], "flow_run": made["name"],
                            "deployment": deployment(FLOW_SYNC_ENDPOINT), "status": "CREATE REQUESTED"}
    if not wait:
        return view
    deadline = time.monotonic() + timeout_seconds
    while (state := post(signed_in_api(settings), "/v1/queries/push_state", {"run_id": made["id"]}))["state"] not in (
            "COMPLETED", "FAILED", "CRASHED", "CANCELLED") and time.monotonic() < deadline:
        time.sleep(1.0)
    if state["state"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        raise TimeoutError(f"push {made['name']} ({made['id']}) is still {state['state']} after {timeout_seconds:g} s; "
                           f"follow it with `mlyard endpoints show {spec.endpoint}`")
    if state["state"] != "COMPLETED":
        raise RunFailed("FAIL SYNC ENDPOINT CODE", made["id"], state["message"] or state["state"])
    written = write_config(config, spec.endpoint, area["gateway"], spec.model or spec.endpoint, state["version"],
                           spec.kind or folder_kind(Path(spec.source)))
    return {**view, "status": "ACTIVE", "config": {"path": str(config), **written}}
