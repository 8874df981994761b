"""`mlyard endpoints logs` on a cluster (issue 70 §1): an endpoint's stage pods print a record per request in their
log (`mlyard serve --inference-log -`, as tasks/kubernetes.py renders their arguments: tests/tasks/
test_kubernetes.py), and the mlyard API's pods
read them through `pods/log` as the install's account `mlyard-api` (tasks/logpods.py), on Kubernetes' own control
plane: the last records of that endpoint's pods, oldest first, none of another endpoint's."""

from __future__ import annotations

import sys

SCRIPT = """
import time
from mlyard.serving.inference_log import InferenceLog
log = InferenceLog("-")  # what `mlyard serve --inference-log -` writes
print("INFO: the server's own line", flush=True)
for i in range({n}):
    log.request("m", "POST", "/v2/models/m/infer", 200 if i % 3 else 500, 1, 0.01, f"{tag}-{{i}}")
    time.sleep(0.01)
time.sleep(600)
"""


def _stage_pod(endpoint: str, stage: str, n: int, tag: str) -> dict:
    """A stage pod as tasks/kubernetes.py labels and names it, its server writing `n` records."""
    return {"metadata": {"name": f"{endpoint}-{stage}-pod", "labels": {
        "app.kubernetes.io/name": "mlyard-model-server", "mlyard.io/endpoint": endpoint, "mlyard.io/stage": stage}},
        "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "model-server", "image": "mlyard-serving:0.1.0",
                                 "command": [sys.executable, "-c", SCRIPT.format(n=n, tag=tag)],
                                 "env": [{"name": "MLYARD_ENDPOINT_ID", "value": endpoint},
                                         {"name": "MLYARD_ENDPOINT_STAGE_ID", "value": stage}],
                                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}


def test_endpoint_logs_are_read_from_its_stage_pods_as_the_api_account(control_plane):
    from kube_cluster import ROOT
    from kubelet_node import ClusterApi, NodeKubelet
    from pod_moves import account_client, wait

    from mlyard.tasks.logpods import endpoint_records

    ns = "mlyard-logs"
    kube = ClusterApi(control_plane.url, control_plane.ssl_context())
    node = NodeKubelet(control_plane, "logs-node", str(ROOT))
    try:
        kube.create("Namespace", "v1", None, {"metadata": {"name": ns, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted"}}})
        for endpoint, stage, n in (("classify", "blue", 30), ("classify", "green", 5), ("other", "main", 7)):
            kube.create("Pod", "v1", ns, _stage_pod(endpoint, stage, n, f"{endpoint}-{stage}"))
        reader = account_client(kube, control_plane, ns, "mlyard-api")
        wait(lambda: len(endpoint_records(reader, ns, "classify", 100)) == 35 and len(
            endpoint_records(reader, ns, "other", 100)) == 7, 120, "every stage pod's records")
        last = endpoint_records(reader, ns, "classify", 10)
        assert len(last) == 10 and [r["time"] for r in last] == sorted(r["time"] for r in last)
        assert {r["endpointId"] for r in last} == {"classify"} and {r["endpointStageId"] for r in last} <= {"blue", "green"}
        every = endpoint_records(reader, ns, "classify", 100)
        assert {r["logLevel"] for r in every} == {"INFO", "ERROR"} and all(r["category"] == "mlyard.inference" for r in every)
        assert sorted(r["inferenceId"] for r in every if r["endpointStageId"] == "green") == [f"classify-green-{i}" for i in range(5)]
        assert last == every[-10:]
    finally:
        kube.drop_namespace(ns)
        node.close()
