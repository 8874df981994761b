"""A training on the gpu pool, end to end, with the real Prefect Kubernetes worker (prefect-kubernetes
0.8, its kopf observer included) on Kubernetes' own control plane (tests/controlplane.py): its Job
controller makes the pod, the ephemeral volume controller its data claim (a stand-in provisioner binds it:
infra/conftest.py), the scheduler binds it to the GPU node, whose kubelet (tests/kubelet_node.py) runs the
code host and the flow's container as their users, with the container's environment resolved from the
API's objects (the ConfigMap and Secret name the cluster's stores: tests/cluster_stores.py) and a token the
API issued to the pod, so the flow run in the pod reports to the test stack's Prefect as a pod's would.
Assertions are on the objects and on the run's records."""

from __future__ import annotations

import copy
import time

import kubernetes_validate
import pytest
from kube_cluster import NS, final, finished_job, run_training

SCRIPT = """import os, sys
def reach(path):
    try:
        open(path, "rb").read(1)
        return "read"
    except OSError as exc:
        return type(exc).__name__
print(f"uid={os.getuid()} gid={os.getgid()}", flush=True)
# what the pod mounts and runs for the platform: the settings Secret, the service account's token, the flow's
# process (its environment), its files
CREDENTIALS = ('PREFECT_API_AUTH', 'MLYARD_CATALOG', 'MLYARD_S3', 'MLFLOW_TRACKING_TOKEN', 'MLYARD_INTERNAL')
pids = [p for p in os.listdir('/proc') if p.isdigit()]
flows = [p for p in pids if b'prefect' in open(f'/proc/{p}/cmdline', 'rb').read()]
leaked = set()
for p in pids:
    try:
        leaked |= {v.split(b'=')[0].decode() for v in open(f'/proc/{p}/environ', 'rb').read().split(b'\\0')
                   if v.startswith(tuple(c.encode() for c in CREDENTIALS))}
    except OSError:
        pass
def plant(path):
    try:
        open(path, "w").write("import os")
        return "written"
    except OSError as exc:
        return type(exc).__name__
home = os.path.dirname(os.path.dirname(os.path.dirname(os.environ['EM_MODEL_DIR'])))  # <home>/runs/<run>/model
print(f"home={plant(os.path.join(home, 'planted.pth'))}", flush=True)
print(f"secret={reach('/var/run/secrets/mlyard/mlyard_catalog_url')}"
      f" token={reach('/var/run/secrets/kubernetes.io/serviceaccount/token')} flow_processes={len(flows)}"
      f" leaked={sorted(leaked)} env={sorted(k for k in os.environ if k.startswith(CREDENTIALS))}", flush=True)
print('accuracy=0.93', flush=True)
sys.exit(int(sys.argv[-1]) if len(sys.argv) > 2 else 0)
"""


def _job_of(api, flow_run_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in api.items("Job", NS) if j["metadata"]["labels"].get("prefect.io/flow-run-id") == flow_run_id]
        if jobs:
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError("the worker made no Job")


def test_a_training_on_the_gpu_pool_runs_as_a_job_and_is_recorded(real_cluster, algorithm):
    cluster = real_cluster
    api, platform = cluster.api, cluster.platform
    spec = {"name": "on-gpu", "experiment": "kube", "source_uri": str(algorithm(SCRIPT)), "entry_point": "main.py",
            "resources": {"gpu_count": 2, "gpu_type": "NVIDIA-A100-SXM4-80GB", "cpu": 4, "memory": "16Gi",
                          "data_storage": "100Gi"}}
    flow_run_id, _ = run_training(spec)
    job = _job_of(api, flow_run_id)
    manifest = {"apiVersion": "batch/v1", "kind": "Job",  # what a list's items leave out
                **{k: v for k, v in copy.deepcopy(job).items() if k != "status"}}
    for field in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
        manifest["metadata"].pop(field)
    pod = manifest["spec"]["template"]["spec"]
    for forced in ("completions", "parallelism"):  # prefect-kubernetes' own (infra/README.md); the API server
        pod.pop(forced, None)  # drops them from the pod spec (unknown fields), as a cluster's does
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(manifest, version, strict=True)
    flow, host = pod["containers"][0], pod["initContainers"][0]
    # the user's code runs in the code host, a sidecar that gets the pool's resources (the GPUs) and mounts neither
    # the settings Secret nor the service account's token; the flow's container mounts both
    assert host["name"] == "code-host" and host["restartPolicy"] == "Always"
    assert str(host["resources"]["limits"]["nvidia.com/gpu"]) == "2" and host["resources"]["limits"]["memory"] == "16Gi"
    assert "nvidia.com/gpu" not in flow["resources"]["limits"]
    assert pod["automountServiceAccountToken"] is False
    assert {m["name"] for m in host["volumeMounts"]} == {"tmp", "dshm", "data"}
    assert {"settings", "kube-api-access"} <= {m["name"] for m in flow["volumeMounts"]}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "dshm", "data", "settings", "kube-api-access"}

    fr = final(flow_run_id)
    assert fr.state.is_completed(), (fr.state, list(api.pod_logs.values()))
    job = finished_job(api, job["metadata"]["name"])
    assert job["status"]["succeeded"] == 1
    pods = [p for p in api.items("Pod", NS) if p["metadata"]["labels"]["job-name"] == job["metadata"]["name"]]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Succeeded"
    log = api.pod_logs[(NS, pods[0]["metadata"]["name"])]
    assert "uid=10002 gid=10001" in log, "the script ran as the code host's user"
    # the flow read the Secret (it reached the catalog); its user's script, in the code host, has no such file,
    # no token, sees no process of the flow's and no credential in any environment it can read
    assert "secret=FileNotFoundError token=FileNotFoundError flow_processes=0 leaked=[] env=[]" in log, log[-3000:]
    assert "home=PermissionError" in log, "the flow's files are its own"
    assert "running the pod's user code" in cluster.kubelet.sidecar_logs[(NS, pods[0]["metadata"]["name"], "code-host")]
    run = platform.tracking.find_training_run(flow_run_id)  # the pod wrote to the shared MLflow, not to its own
    assert run is not None and run.status == "FINISHED" and run.metrics["accuracy"] == pytest.approx(0.93)


def test_a_failing_script_fails_the_run_with_its_exit_code(real_cluster, algorithm):
    api, _ = real_cluster
    spec = {"name": "fails-on-gpu", "experiment": "kube", "source_uri": str(algorithm(SCRIPT)),
            "entry_point": "main.py", "hyperparameters": {"exit": 3}}
    flow_run_id, _ = run_training(spec)
    fr = final(flow_run_id)
    assert fr.state.is_failed(), fr.state
    assert "exit code 3" in (fr.state.message or "")
    job = finished_job(api, _job_of(api, flow_run_id)["metadata"]["name"])
    # `prefect flow-run execute` reports the run's failure to Prefect and exits 0: the Job completes, and
    # the failure (with the script's exit code and last lines) is the run's state, as on a cluster
    assert [c["type"] for c in job["status"]["conditions"] if c["status"] == "True"][-1] == "Complete"
    pod = next(p for p in api.items("Pod", NS) if p["metadata"]["labels"]["job-name"] == job["metadata"]["name"])
    assert "exit code 3" in api.pod_logs[(NS, pod["metadata"]["name"])]
