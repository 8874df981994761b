"""Multi-node training on a Kubernetes pool (issue 26 §2): the training's flow run makes an Indexed Job of
its nodes plus a headless Service, follows it and ends with its state.

The objects are rendered and checked strictly (kubernetes-validate, 1.30 and 1.33) for 1, 2 and 4 nodes,
with each pod's environment; then the real Prefect Kubernetes worker runs 2- and 3-node trainings on
Kubernetes' own control plane (tests/controlplane.py): the Job controller makes one pod per completion
index with its hostname, the scheduler binds them to the node whose kubelet (tests/kubelet_node.py) runs
each pod's command here, and the coordinator does its work as its service account (mlyard-flow-run, its
Role of infra/k8s/base/flow-runs.yaml and nothing more). No cluster DNS runs here, so the nodes run code
that does not connect to each other; a real rendezvous across node processes is tested on one machine
(tests/flows/test_training.py, 2 nodes × 2 processes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import kubernetes_validate
import pytest
from job_templates import VERSIONS
from kube_cluster import NS, final, finished_job, run_training

from mlyard.core.specs import TrainingSpec
from mlyard.tasks.node_jobs import NodeJob, job_name, node_environment, render

NODE_SCRIPT = """
import json, os, sys
rank, tf = int(os.environ["NODE_RANK"]), json.loads(os.environ["TF_CONFIG"])
print(f"node={rank} nnodes={os.environ['NNODES']} tf_index={tf['task']['index']} "
      f"workers={len(tf['cluster']['worker'])} master={os.environ['MASTER_ADDR']}", flush=True)
if rank == 0:
    print("accuracy=0.91", flush=True)
    open(os.path.join(os.environ["EM_MODEL_DIR"], "model.txt"), "w").write("trained on nodes")
print(f"uid={os.getuid()}", flush=True)
restarted = os.environ["HOSTNAME"].split("-")[-2].startswith("r")  # mlyard-nodes-<hex id>[-rK]-<index>
once = os.environ.get("EM_HP_ONCE") == "true"  # the node fails only on the gang's first start
if rank == int(os.environ.get("EM_HP_FAIL", -1)) and not (once and restarted):
    print(f"node {rank} gives up", flush=True)
    sys.exit(3)
"""


def _coordinator_pod(gpu_type: str | None = None) -> dict:
    """A flow-run pod as the gpu pool's template makes it (the part render reads)."""
    return {"metadata": {"name": "brave-otter-abcde", "namespace": NS},
            "spec": {"containers": [{"name": "prefect-job", "image": "registry.example/mlyard:0.1.0",
                                     "args": ["prefect", "flow-run", "execute"],
                                     "env": [{"name": "PREFECT__FLOW_RUN_ID", "value": "x"}],
                                     "envFrom": [{"configMapRef": {"name": "mlyard-config", "optional": True}}],
                                     "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                                     "volumeMounts": [{"name": "data", "mountPath": "/mlyard/data"},
                                                      {"name": "kube-api-access-x7k2p", "readOnly": True,
                                                       "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                     "restartPolicy": "Never", "serviceAccountName": "mlyard-flow-run", "completions": 1,
                     "parallelism": 1, "nodeName": "cpu-1",
                     "imagePullSecrets": [{"name": "mlyard-registry-1"}],
                     **({"nodeSelector": {"nvidia.com/gpu.product": gpu_type}} if gpu_type else {}),
                     "volumes": [{"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {
                         "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}},
                                 {"name": "kube-api-access-x7k2p", "projected": {"sources": [
                                     {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}]}}


@pytest.mark.parametrize("nodes", [1, 2, 4])
@pytest.mark.parametrize("torchrun", [False, True])
def test_the_nodes_job_and_service_for_1_2_and_4_nodes(nodes, torchrun):
    from mlyard.tasks.launch import Rendezvous, Workdirs, build_invocation
    from mlyard.tasks.node_jobs import RENDEZVOUS_PORT

    spec = TrainingSpec(name="ddp", source_uri="s3://b/algo", entry_point="train.py", nodes=nodes, torchrun=torchrun,
                        processes_per_node=2 if torchrun else 1,
                        resources={"gpu_count": 4, "gpu_type": "NVIDIA-A100-SXM4-80GB", "cpu": 16, "memory": "128Gi",
                                   "data_storage": "500Gi"})
    job = NodeJob(job_name("0f3c9a1e-7d2b-4c8e-9f10-3b5a6c7d8e9f"), NS, nodes)
    service, batch = render(spec, _coordinator_pod(), job, "0f3c9a1e", "run-1")
    for obj in (service, batch):
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert batch["spec"]["completionMode"] == "Indexed"
    assert batch["spec"]["completions"] == batch["spec"]["parallelism"] == nodes
    assert batch["spec"]["backoffLimit"] == 0 and batch["spec"]["ttlSecondsAfterFinished"] > 0
    pod = batch["spec"]["template"]["spec"]
    assert service["spec"]["selector"].items() <= batch["spec"]["template"]["metadata"]["labels"].items()
    assert pod["subdomain"] == service["metadata"]["name"] == job.name and "nodeName" not in pod
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "mlyard.tasks.node"] and "args" not in container
    assert container["resources"]["limits"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": 4}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["imagePullSecrets"] == [{"name": "mlyard-registry-1"}]
    assert pod["serviceAccountName"] == "mlyard-run", "the nodes run the user's script: no right to make Jobs"
    assert [v["name"] for v in pod["volumes"]] == ["data"], "the token volume is admission's to add again"
    assert [m["name"] for m in container["volumeMounts"]] == ["data"]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "500Gi"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "PREFECT__FLOW_RUN_ID" not in env and TrainingSpec.model_validate_json(env["MLYARD_NODE_SPEC"]) == spec

    workers = [f"{job.name}-{i}.{job.name}:2222" for i in range(nodes)]
    for index in range(nodes):  # what each pod computes from its JOB_COMPLETION_INDEX
        node = node_environment(spec, job, index)
        assert node["NODE_RANK"] == str(index) and node["NNODES"] == str(nodes)
        assert node["MASTER_ADDR"] == f"{job.name}-0.{job.name}"
        assert json.loads(node["TF_CONFIG"]) == {"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                                         "index": index}}
        assert ("RANK" in node) != torchrun
        argv, _ = build_invocation(spec, Workdirs.under(Path("/d"), Path("/d/src"), {}, None), "python", "kr1", node,
            Rendezvous(f"{job.host(0)}:{RENDEZVOUS_PORT}", "0f3c9a1e", host=index == 0))
        if torchrun and nodes == 1:
            assert "--standalone" in argv and "--nnodes=1" in argv
        elif torchrun:
            assert f"--nnodes={nodes}" in argv and "--nproc_per_node=2" in argv and f"--node_rank={index}" in argv
            assert f"--rdzv_endpoint={job.name}-0.{job.name}:29400" in argv and "--rdzv_backend=c10d" in argv
        else:
            assert argv[:2] == ["python", "-u"]


def test_the_coordinator_asks_for_no_gpu_and_the_nodes_for_theirs():
    spec = TrainingSpec(name="ddp", source_uri=".", entry_point="t.py", nodes=3, image="custom",
                        resources={"gpu_count": 8, "memory": "64Gi"})
    assert spec.job_variables()["gpu_count"] == 0 and spec.job_variables()["image"] == "custom"
    assert spec.job_variables()["service_account_name"] == "mlyard-flow-run"  # the one that makes the nodes' Job
    assert "service_account_name" not in spec.model_copy(update={"nodes": 1}).job_variables()
    assert spec.node_resources()["gpu_count"] == 8 and spec.node_resources()["memory_limit"] == "64Gi"


def _nodes_job(api, name):
    return api.get("Job", NS, name)


def test_a_3_node_training_runs_as_an_indexed_job_and_ends_with_it(real_cluster, algorithm):
    api, _ = real_cluster
    spec = {"name": "three-nodes", "experiment": "kube", "source_uri": str(algorithm(NODE_SCRIPT)),
            "entry_point": "main.py", "nodes": 3, "resources": {"gpu_count": 1}}
    flow_run_id, _ = run_training(spec)
    fr = final(flow_run_id)
    assert fr.state.is_completed(), (fr.state, {k[1]: v[-600:] for k, v in api.pod_logs.items()})
    name = job_name(flow_run_id)
    job = _nodes_job(api, name)
    assert job["spec"]["completionMode"] == "Indexed" and job["status"]["succeeded"] == 3
    service = api.get("Service", NS, name)
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"], "goes with the Job"
    pods = sorted((p for p in api.items("Pod", NS) if p["metadata"]["labels"].get("job-name") == name),
                  key=lambda p: int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]))
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"] * 3
    for index, pod in enumerate(pods):
        log = api.pod_logs[(NS, pod["metadata"]["name"])]
        assert f"node={index} nnodes=3 tf_index={index} workers=3 master={name}-0.{name}" in log, log
        assert "uid=10002" in log, "each node runs its script in its pod's code host, as that container's user"
    run = real_cluster.platform.tracking.find_training_run(flow_run_id)
    assert run is not None and run.status == "FINISHED" and run.metrics["accuracy"] == pytest.approx(0.91)
    assert real_cluster.platform.tracking.client.list_artifacts(run.run_id, "model"), "node 0 saved the model"
    # node 0's log is followed as one stream into the run's log: each of its lines once, in order
    lead = [line for line in api.pod_logs[(NS, pods[0]["metadata"]["name"])].splitlines() if line.strip()]
    relayed, everything = _run_log_lines(flow_run_id, set(lead))
    coordinator = {pod: text[-3000:] for (_, pod), text in api.pod_logs.items() if not pod.startswith(name)}
    assert relayed == lead, (relayed, lead, everything, coordinator)


def _run_log_lines(flow_run_id: str, wanted: set[str], timeout: float = 15) -> tuple[list[str], list[str]]:
    """The run's log lines that are in `wanted`, oldest first, and all its lines (for a failure's message)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # the pod's log handler sends its last batch as it exits
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
            lines = [log.message for log in logs if log.message in wanted]  # oldest first
            if set(lines) == wanted or time.monotonic() > deadline:
                return lines, [log.message[:200] for log in logs]
            time.sleep(0.3)


def test_a_node_failing_past_max_restarts_fails_the_training_with_its_last_lines(real_cluster, algorithm):
    api, _ = real_cluster
    spec = {"name": "node-fails", "experiment": "kube", "source_uri": str(algorithm(NODE_SCRIPT)),
            "entry_point": "main.py", "nodes": 2, "hyperparameters": {"fail": 1}, "max_restarts": 1}
    flow_run_id, _ = run_training(spec)
    fr = final(flow_run_id)
    assert fr.state.is_failed(), fr.state
    message = fr.state.message or ""
    assert "node 1 of 2: exit code 3" in message and "[node 1] node 1 gives up" in message, message
    assert "after 1 restart(s) of all 2 nodes (max_restarts 1)" in message, message
    run = real_cluster.platform.tracking.find_training_run(flow_run_id)
    assert run is not None and run.status == "FAILED"
    # the first start's Job was deleted for the restart; the last one is kept, failed, for kubectl describe
    assert ("Job", NS, job_name(flow_run_id)) not in api.objects
    job = finished_job(api, job_name(flow_run_id, 1))  # the run may fail a moment before the Job is marked
    conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert conditions.get("Failed") == "True" and "Complete" not in conditions, conditions  # FailureTarget first


def test_a_failed_node_restarts_every_node_and_the_training_completes(real_cluster, algorithm):
    """JobSet's failurePolicy: one node's failure starts the whole gang again, within max_restarts."""
    api, _ = real_cluster
    spec = {"name": "node-restarts", "experiment": "kube", "source_uri": str(algorithm(NODE_SCRIPT)),
            "entry_point": "main.py", "nodes": 2, "max_restarts": 2,
            "hyperparameters": {"fail": 1, "once": True}}
    flow_run_id, _ = run_training(spec)
    fr = final(flow_run_id)
    assert fr.state.is_completed(), (fr.state, {k[1]: v[-600:] for k, v in api.pod_logs.items()})
    first, again = job_name(flow_run_id), job_name(flow_run_id, 1)
    assert ("Job", NS, first) not in api.objects and ("Service", NS, first) not in api.objects
    job = api.get("Job", NS, again)
    assert job["status"]["succeeded"] == 2 and ("Job", NS, job_name(flow_run_id, 2)) not in api.objects
    failed_first = [log for (_, pod), log in api.pod_logs.items() if pod.startswith(f"{first}-1-")]
    assert failed_first and "node 1 gives up" in failed_first[0]
    _, everything = _run_log_lines(flow_run_id, set(), timeout=0)
    assert any("restarting all 2 nodes (restart 1 of 2)" in line for line in everything), everything
    run = real_cluster.platform.tracking.find_training_run(flow_run_id)
    assert run is not None and run.status == "FINISHED" and run.metrics["accuracy"] == pytest.approx(0.91)


def test_max_restarts_is_for_multi_node_trainings():
    with pytest.raises(ValueError, match="max_restarts 2 restarts the nodes of a multi-node training"):
        TrainingSpec(name="one", source_uri=".", entry_point="t.py", max_restarts=2)


def test_cancelling_the_training_ends_every_node(real_cluster, algorithm):
    """Cancel from the UI: the worker deletes the flow run's Job; its pod owns the nodes' Job, which goes."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    api, kubelet = real_cluster
    spec = {"name": "node-stop", "experiment": "kube", "source_uri": str(algorithm(
        "import time\nprint('node up', flush=True)\ntime.sleep(120)\n")), "entry_point": "main.py", "nodes": 2}
    flow_run_id, _ = run_training(spec)
    name = job_name(flow_run_id)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and sum("node up" in v for (_, pod), v in api.pod_logs.items()
                                              if pod.startswith(name)) < 2:
        time.sleep(0.2)
    nodes = [p for p in list(kubelet.processes) if p.startswith(name)]
    assert len(nodes) == 2, "both nodes run"
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message="stopped by test"), force=True)
    fr = final(flow_run_id, timeout=90)
    assert fr.state.is_cancelled(), fr.state
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(kubelet.processes[p].poll() is None for p in nodes):
        time.sleep(0.2)
    assert all(kubelet.processes[p].poll() is not None for p in nodes), (
        "every node process ended", [(o["kind"], o["metadata"]["name"]) for k in ("Job", "Pod") for o in api.items(k, NS)],
        {k[1]: v[-1500:] for k, v in api.pod_logs.items() if not k[1].startswith(name)})
    deadline = time.monotonic() + 60  # the garbage collector deletes the nodes' Job with its owner, in its time
    while time.monotonic() < deadline and [j for j in api.items("Job", NS) if j["metadata"]["name"] == name]:
        time.sleep(0.5)
    assert not [j for j in api.items("Job", NS) if j["metadata"]["name"] == name]
