"""The played node's kubelet (tests/kubelet_node.py, on Kubernetes' own control plane) runs a container as a
node would (tests/kubelet_sandbox.py): as the user its securityContext names, with its Secret files laid out
with their mode and the pod's fsGroup, its emptyDir and ephemeral volumes owned as kubelet owns them, and a
read-only root file system where set. So the tests show what broke on a real cluster: a 0400 Secret without
fsGroup is unreadable to user 10001 (the gateway's crash loop), a data volume without fsGroup is root's (a GPU
run could not write to /mlyard/data). The Jobs, their pods, the claims and the namespace's restricted
admission are the control plane's."""

from __future__ import annotations

import base64
import os
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the kubelet changes users: needs root, as the tests run here")

NS = "mlyard"
PROBE = """
id -u; id -G
cat /var/run/secrets/mlyard/mlyard_catalog_url && echo " <- secret read"
touch /tmp/ok && echo "tmp writable"
touch /mlyard/data/ok && echo "data writable"
touch /etc/mlyard-probe 2>&1 || echo "root read-only"
"""


def _job(name: str, fs_group: int | None) -> dict:
    pod_sc = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"},
              **({"fsGroup": fs_group} if fs_group is not None else {})}
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "securityContext": pod_sc,
        "containers": [{"name": "probe", "image": "mlyard", "command": ["sh", "-c", PROBE], "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "settings", "mountPath": "/var/run/secrets/mlyard", "readOnly": True},
                             {"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": "/mlyard/data"}]}],
        "volumes": [{"name": "settings", "secret": {"secretName": "mlyard-settings", "defaultMode": 0o400}},
                    {"name": "tmp", "emptyDir": {}},
                    {"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {
                        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}]}}}}


def _log(api, node, job: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get("Job", NS, job).get("status", {}).get("conditions"):
            return next(text for (ns, pod), text in node.api.pod_logs.items() if pod.startswith(f"{job}-"))
        time.sleep(0.2)
    raise AssertionError(f"Job {job} did not end")


def test_a_container_runs_as_its_user_with_kubelets_volumes_and_a_read_only_root(real_api, provisioner,
                                                                                  control_plane, tmp_path):
    from kubelet_node import NodeKubelet

    api = real_api
    code, doc = api.request("PATCH", api.path("Namespace", None, NS), {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}}, "application/merge-patch+json")
    assert code == 200, doc
    node = NodeKubelet(control_plane, f"node-{tmp_path.name[-12:].strip('_-').lower().replace('_', '-')}", "/")
    try:
        api.create("Secret", "v1", NS, {"metadata": {"name": "mlyard-settings"}, "data": {
            "mlyard_catalog_url": base64.b64encode(b"postgresql+psycopg://db/catalog").decode()}})
        api.create("Job", "batch/v1", NS, _job("with-fsgroup", 10001))
        api.create("Job", "batch/v1", NS, _job("without-fsgroup", None))
        good, bare = _log(api, node, "with-fsgroup"), _log(api, node, "without-fsgroup")
    finally:
        node.close()
    assert good.splitlines()[:2] == ["10001", "10001"], good  # its user, its group, the fsGroup
    assert "postgresql+psycopg://db/catalog <- secret read" in good, good
    assert "tmp writable" in good and "data writable" in good and "root read-only" in good, good
    assert "Read-only file system" in good
    # without fsGroup: the 0400 root-owned Secret and the root-owned data volume, as on a node
    assert "Permission denied" in bare and "<- secret read" not in bare and "data writable" not in bare, bare
    assert "tmp writable" in bare, "an emptyDir is world-writable"
    assert not os.path.exists("/run/secrets/mlyard") and not os.path.exists("/mlyard"), "nothing on the host"
