"""A training on the gpu pool, end to end, with the real Prefect Kubernetes worker (prefect-kubernetes
0.8, its kopf observer included) against the Kubernetes API emulator of tests/kube_api.py; no cluster
or Docker engine can run here. The test plays the Job controller and the kubelet (`Kubelet`): the Job's
container command runs as a process on this machine with the container's environment resolved from
the API's objects (the mlyard-config ConfigMap gives it the test stack's MLflow and catalog), so the
flow run in the "pod" reports to the test stack's Prefect as a pod's would. Assertions are on the
objects and on the run's records."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
from kube_api import KubeApi, Kubelet

ROOT = Path(__file__).resolve().parents[2]
NS = "mlyard"
SCRIPT = "import sys\nprint('accuracy=0.93', flush=True)\nsys.exit(int(sys.argv[-1]) if len(sys.argv) > 2 else 0)\n"


@pytest.fixture
def cluster(stack, settings, tmp_path):
    # per test: the worker and the pods' processes end with it, before the leak guard looks
    api = KubeApi()
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    api.create("Namespace", "v1", None, {"metadata": {"name": NS}}, "kubectl")
    api.create("ConfigMap", "v1", NS, {"metadata": {"name": "mlyard-config"}, "data": {
        "MLYARD_MLFLOW_TRACKING_URI": settings.mlflow_uri, "MLYARD_CATALOG_URL": settings.catalog_db_url,
        "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}}, "kubectl")
    data = tmp_path / "data"  # the pod's data storage volume, at /mlyard/data in a real pod
    data.mkdir()
    kubelet = Kubelet(api, str(ROOT), overrides={"MLYARD_HOME": str(data)})
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": NS,
           "PREFECT_WORKER_QUERY_SECONDS": "0.5"}
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "gpu",
                                   "--type", "kubernetes", "--name", "kube-test"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield api, kubelet
    finally:
        from tasks.processes import stop_group

        stop_group(worker, 10)
        kubelet.close()
        api.close()
        if os.environ.get("MLYARD_KEEP_TEST_HOME"):
            print(log.read_text())


def _run(spec: dict) -> tuple[str, float]:
    from prefect.deployments import run_deployment

    from core.specs import TrainingSpec

    t0 = time.time()
    fr = run_deployment("train/gpu", parameters={"spec": spec}, job_variables=TrainingSpec(**spec).job_variables(),
                        timeout=0)
    return str(fr.id), t0


def _final(flow_run_id: str, timeout: float = 180):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            fr = client.read_flow_run(flow_run_id)
            if fr.state is not None and fr.state.is_final():
                return fr
            time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} did not end within {timeout} s")


def _finished_job(api: KubeApi, name: str, timeout: float = 60) -> dict:
    """The Job once its pod's process ended (the run reports its end a moment before its process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get("Job", NS, name)
        if job.get("status", {}).get("conditions"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"Job {name} did not finish")


def _job_of(api: KubeApi, flow_run_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in api.items("Job", NS) if j["metadata"]["labels"].get("prefect.io/flow-run-id") == flow_run_id]
        if jobs:
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError("the worker made no Job")


def test_a_training_on_the_gpu_pool_runs_as_a_job_and_is_recorded(cluster, platform, algorithm):
    api, _ = cluster
    spec = {"name": "on-gpu", "experiment": "kube", "source_uri": str(algorithm(SCRIPT)), "entry_point": "main.py",
            "resources": {"gpu_count": 2, "gpu_type": "NVIDIA-A100-SXM4-80GB", "cpu": 4, "memory": "16Gi",
                          "data_storage": "100Gi"}}
    flow_run_id, _ = _run(spec)
    job = _job_of(api, flow_run_id)
    manifest = {k: v for k, v in copy.deepcopy(job).items() if k != "status"}
    for field in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
        manifest["metadata"].pop(field)
    pod = manifest["spec"]["template"]["spec"]
    for forced in ("completions", "parallelism"):  # prefect-kubernetes' own (infra/README.md)
        pod.pop(forced)
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(manifest, version, strict=True)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2 and container["resources"]["limits"]["memory"] == "16Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {v["name"] for v in pod["volumes"]} == {"dshm", "data", "settings"}

    fr = _final(flow_run_id)
    assert fr.state.is_completed(), (fr.state, list(api.pod_logs.values()))
    job = _finished_job(api, job["metadata"]["name"])
    assert job["status"]["succeeded"] == 1
    pods = [p for p in api.items("Pod", NS) if p["metadata"]["labels"]["job-name"] == job["metadata"]["name"]]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Succeeded"
    run = platform.tracking.find_training_run(flow_run_id)  # the pod wrote to the shared MLflow, not to its own
    assert run is not None and run.status == "FINISHED" and run.metrics["accuracy"] == pytest.approx(0.93)


def test_a_failing_script_fails_the_run_with_its_exit_code(cluster, algorithm):
    api, _ = cluster
    spec = {"name": "fails-on-gpu", "experiment": "kube", "source_uri": str(algorithm(SCRIPT)),
            "entry_point": "main.py", "hyperparameters": {"exit": 3}}
    flow_run_id, _ = _run(spec)
    fr = _final(flow_run_id)
    assert fr.state.is_failed(), fr.state
    assert "exit code 3" in (fr.state.message or "")
    job = _finished_job(api, _job_of(api, flow_run_id)["metadata"]["name"])
    # `prefect flow-run execute` reports the run's failure to Prefect and exits 0: the Job completes, and
    # the failure (with the script's exit code and last lines) is the run's state, as on a cluster
    assert job["status"]["conditions"][0]["type"] == "Complete"
    pod = next(p for p in api.items("Pod", NS) if p["metadata"]["labels"]["job-name"] == job["metadata"]["name"])
    assert "exit code 3" in api.pod_logs[(NS, pod["metadata"]["name"])]
