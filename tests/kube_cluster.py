"""Helpers of the tests that run flow runs on the gpu pool on the tests' control plane (the `real_cluster`
fixture is in tests/infra/conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NS = "mlyard"


def run_training(spec: dict) -> tuple[str, float]:
    """A training queued on the gpu pool, its local inputs uploaded to the cluster's storage first (as
    `mlyard train --submit` does: the `cluster` fixture sets MLYARD_UPLOAD_URI)."""
    from prefect.deployments import run_deployment

    from mlyard.core.settings import Settings
    from mlyard.core.specs import TrainingSpec
    from mlyard.uploads import for_cluster

    t0 = time.time()
    training = for_cluster(TrainingSpec(**spec), Settings())
    fr = run_deployment("train/train-gpu", parameters={"spec": training.model_dump(mode="json")},
                        job_variables=training.job_variables(), timeout=0)
    return str(fr.id), t0


def final(flow_run_id: str, timeout: float = 180):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            fr = client.read_flow_run(flow_run_id)
            if fr.state is not None and fr.state.is_final():
                return fr
            time.sleep(0.5)
    state = fr.state.name if fr.state else None
    raise AssertionError(f"flow run {flow_run_id} did not end within {timeout} s: it is {state} "
                         f"({(fr.state.message or '') if fr.state else ''}), worker {fr.work_queue_name} of "
                         f"{fr.work_pool_name}, infrastructure {fr.infrastructure_pid or 'none'}")


def finished_job(api, name: str, timeout: float = 60) -> dict:
    """The Job once its pod's process ended (the run reports its end a moment before its process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get("Job", NS, name)
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
               for c in job.get("status", {}).get("conditions") or []):  # a real controller says SuccessCriteriaMet first
            return job
        time.sleep(0.1)
    raise AssertionError(f"Job {name} did not finish")
