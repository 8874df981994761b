"""A team member's push of a folder to an endpoint (`mlyard endpoints deploy ENDPOINT --sync DIR` with
MLYARD_API_KEY): the folder goes to their project's storage through the mlyard API, the platform checks it
as on its own machine and pushes it in a run of sync-endpoint-code made as them (mlyard/member_runs.py),
and their command writes the endpoint's URL into their own inference.config.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.names import FLOW_SYNC_ENDPOINT
from core.settings import Settings
from core.specs.endpoint import SyncSpec


def as_member(spec: SyncSpec) -> dict[str, Any]:
    """Queue the member's push: the run's view, with the config file written here (the model version it
    becomes is known when the run has made it: `mlyard endpoints show`)."""
    from mlyard.submit import submit
    from mlyard.uploads import for_cluster
    from mlyard.warm_api import post, signed_in_api
    from tasks.inference_config import CONFIG, write_config

    settings = Settings()
    config = Path(spec.config) if spec.config else Path(spec.source) / CONFIG
    bare = spec.model_copy(update={"config": None})  # the platform keeps its copy in the project's storage
    area = post(signed_in_api(settings), "/v1/queries/run_check", {"flow": FLOW_SYNC_ENDPOINT,
                                                                   "spec": bare.model_dump(mode="json")})
    sent = for_cluster(bare, settings, area=area["storage"])
    made = submit(f"{FLOW_SYNC_ENDPOINT}/local", {"spec": sent.model_dump(mode="json")})
    kind = spec.kind or ("model-folder" if any(Path(spec.source).glob("model-definition.y*ml")) else "entry-script")
    written = write_config(config, spec.endpoint, area["gateway"], spec.model or spec.endpoint, None, kind)
    return {"flow_run_id": made["id"], "flow_run": made["name"], "deployment": f"{FLOW_SYNC_ENDPOINT}/local",
            "status": "CREATE REQUESTED", "config": {"path": str(config), **written}}
