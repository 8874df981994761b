"""A pipeline run on a Kubeflow Pipelines server, through the KFP SDK's client (`kfp.Client`): the
pipeline is submitted as its IR YAML with the run's arguments, its state followed until it ends, and
the run terminated on the server when the Prefect run is cancelled. Each step's state comes from the
server's run details and is kept in the run folder's nodes.json, as a local run's is."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from mlyard.core.errors import TrainingStopped
from mlyard.core.specs.pipeline import PipelineRunSpec

FINAL = {"SUCCEEDED": 0, "FAILED": 1, "CANCELED": 2, "SKIPPED": 0}
TASK_STATES = {"SUCCEEDED": "SUCCEEDED", "FAILED": "FAILED", "RUNNING": "RUNNING", "PENDING": "RUNNING",
               "SKIPPED": "SKIPPED", "CANCELED": "CANCELLED", "CANCELING": "CANCELLED"}


def _nodes(run: Any) -> dict[str, dict[str, Any]]:
    details = getattr(run, "run_details", None)
    out: dict[str, dict[str, Any]] = {}
    for t in (getattr(details, "task_details", None) or []):
        name = getattr(t, "display_name", None) or getattr(t, "task_id", "?")
        if name in ("root", "root-driver") or str(name).endswith("-driver"):
            continue
        state = TASK_STATES.get(str(getattr(t, "state", "") or ""), str(getattr(t, "state", "")))
        node = out.setdefault(name, {"state": state, "runs": 0, "failed": 0})
        node["runs"] += 1
        node["failed"] += state == "FAILED"
        node["state"] = "FAILED" if node["failed"] else state
    return out


def run_remote(host: str, run_dir: Path, spec: PipelineRunSpec, should_stop: Callable[[], str | None],
               log: Callable[[str], None], poll_seconds: float = 2.0) -> int:
    """Submit, follow, and (when `should_stop` says so) terminate; 0 when the run succeeded."""
    import kfp

    client = kfp.Client(host=host)
    experiment = client.create_experiment(spec.experiment)
    run = client.create_run_from_pipeline_package(str(run_dir / "pipeline.yaml"), arguments=spec.parameters,
                                                  run_name=spec.name, experiment_id=experiment.experiment_id)
    run_id = run.run_id
    log(f"submitted to Kubeflow Pipelines at {host}: run {run_id}")
    (run_dir / "kfp_run_id").write_text(run_id)
    while True:
        reason = should_stop()
        if reason:
            client.terminate_run(run_id)
            log(f"terminated run {run_id} on the server: {reason}")
            raise TrainingStopped(reason)
        detail = client.get_run(run_id)
        nodes = _nodes(detail)
        tmp = run_dir / "nodes.tmp"
        tmp.write_text(json.dumps(nodes))
        os.replace(tmp, run_dir / "nodes.json")
        state = str(detail.state or "")
        if state in FINAL:
            log(f"run {run_id} ended {state}")
            if state == "CANCELED":
                raise TrainingStopped(f"the run was canceled on the Kubeflow Pipelines server ({run_id})")
            return FINAL[state]
        time.sleep(poll_seconds)
