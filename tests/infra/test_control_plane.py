"""The cluster tests' Kubernetes is Kubernetes' own (tests/controlplane.py): its admission chain refuses what
the restricted Pod Security profile refuses, its RBAC authorizer holds a pod's service account to its roles,
its Job controller makes a Job's pod and its scheduler binds it to the node that tests/kubelet_node.py plays,
which runs it as its user and reports it as a kubelet does."""

from __future__ import annotations

import json
import sys
import time

import pytest
from kube_cluster import ROOT
from kubelet_node import NodeKubelet, RealApi

RESTRICTED = {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _namespace(api: RealApi, name: str) -> None:
    code, doc = api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted"}}})
    assert code in (201, 409), doc


def _pod(name: str, command: list[str], security: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "mlyard:test",
                                                               "command": command, "securityContext": security or {}}]}}


def _until(what: str, check, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def test_the_restricted_profile_and_rbac_are_the_api_servers_own(control_plane):
    admin = RealApi(control_plane.url, control_plane.ssl_context())
    _namespace(admin, "ps")
    code, doc = admin.request("POST", "/api/v1/namespaces/ps/pods", _pod("root", ["true"]))
    assert code == 403 and 'violates PodSecurity "restricted:latest"' in doc["message"], doc
    code, doc = admin.request("POST", "/api/v1/namespaces/ps/pods?dryRun=All", _pod("ok", ["true"], RESTRICTED))
    assert code == 201, doc
    # the namespace's default service account, with no role: its own token reads no Secret
    code, doc = admin.request("POST", "/api/v1/namespaces/ps/serviceaccounts/default/token",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    assert code == 201, doc
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(control_plane.ca))
    request = urllib.request.Request(f"{control_plane.url}/api/v1/namespaces/ps/secrets",
                                     headers={"Authorization": f"Bearer {doc['status']['token']}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert refused.value.code == 403 and "system:serviceaccount:ps:default" in refused.value.read().decode()


def test_a_jobs_pod_is_made_scheduled_and_run_on_a_node_as_its_user(control_plane):
    admin = RealApi(control_plane.url, control_plane.ssl_context())
    _namespace(admin, "jobs")
    node = NodeKubelet(control_plane, "node-jobs", str(ROOT))
    try:
        script = ("import os, json, ssl, urllib.request, urllib.error\n"
                  "d = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
                  "url = 'https://%s:%s/api/v1/namespaces/jobs/secrets' % (os.environ['KUBERNETES_SERVICE_HOST'], "
                  "os.environ['KUBERNETES_SERVICE_PORT'])\n"
                  "req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + open(d + 'token').read()})\n"
                  "try:\n    urllib.request.urlopen(req, context=ssl.create_default_context(cafile=d + 'ca.crt'))\n"
                  "    code = 200\nexcept urllib.error.HTTPError as e:\n    code = e.code\n"
                  "print(json.dumps({'uid': os.getuid(), 'secrets': code, 'namespace': open(d + 'namespace').read()}))\n")
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
               "spec": {"backoffLimit": 0, "template": _pod("x", [sys.executable, "-c", script], RESTRICTED) | {
                   "metadata": {}}}}
        job["spec"]["template"].pop("apiVersion")
        job["spec"]["template"].pop("kind")
        code, doc = admin.request("POST", "/apis/batch/v1/namespaces/jobs/jobs", job)
        assert code == 201, doc
        done = _until("the Job did not end", lambda: next((c for c in (admin.get_object("Job", "jobs", "hello") or {})
                                                         .get("status", {}).get("conditions") or []
                                                         if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None))
        pods = admin.items("Pod", "jobs")
        assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == "node-jobs", pods  # the scheduler's binding
        import urllib.request

        with urllib.request.urlopen(f"{control_plane.url}/api/v1/namespaces/jobs/pods/{pods[0]['metadata']['name']}/log",
                                    context=control_plane.ssl_context(), timeout=10) as resp:  # through the node
            logs = resp.read().decode()
        assert done["type"] == "Complete", (done, logs)
        said = json.loads(logs.strip().splitlines()[-1])
        assert said == {"uid": 10001, "secrets": 403, "namespace": "jobs"}, said
    finally:
        node.close()
