"""Pod Security, as a real cluster enforces it: the rules of the restricted profile (tests/pod_security.py) on
the Kubernetes documentation's own cases, the API server refusing what breaks them and the Job controller
recording why, and every pod mlyard makes passing them (and admitted, dry run, by Kubernetes'
own API server in a namespace that enforces the profile), with its files readable by its user as kubelet
lays them out (a Secret's mode, `fsGroup`)."""

from __future__ import annotations

import json
import os
import stat

import kubernetes.client
import pytest
import yaml
from job_templates import render as render_job
from kubelet_sandbox import files_as_kubelet_lays_them
from pod_security import violations

from mlyard.core.assets import infra
from mlyard.core.specs import TrainingSpec
from mlyard.core.specs.notebook import NotebookSpec
from mlyard.prefect_setup import CPU_TEMPLATE, GPU_TEMPLATE, PREFECT_YAML
from mlyard.tasks import node_jobs
from mlyard.tasks import notebook_cluster as nbk
from mlyard.tasks.cluster import kustomize

K8S = infra("k8s")

BARE = {"containers": [{"name": "main", "image": "busybox"}]}
RESTRICTED = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
              "containers": [{"name": "main", "image": "busybox", "securityContext": {
                  "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}


def test_a_bare_pod_breaks_the_restricted_profile_four_ways_as_the_api_server_says():
    assert [v.split(" (")[0] for v in violations(BARE, "restricted")] == [
        "allowPrivilegeEscalation != false", "unrestricted capabilities", "runAsNonRoot != true", "seccompProfile"]
    assert violations(BARE, "baseline") == [] and violations(BARE, "privileged") == []
    assert violations(RESTRICTED, "restricted") == []


@pytest.mark.parametrize("change, words", [
    ({"hostNetwork": True}, "host namespaces (hostNetwork=true)"),
    ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, 'hostPath volumes (volume "h")'),
    ({"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}, 'volume "n" uses restricted volume type "nfs"'),
    ({"securityContext": {"runAsNonRoot": True, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}},
     "runAsUser=0"),
    ({"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "Unconfined"}}}, "seccompProfile"),
])
def test_each_rule_of_the_profile(change, words):
    assert any(words in v for v in violations({**RESTRICTED, **change}, "restricted")), violations(
        {**RESTRICTED, **change}, "restricted")


def test_container_settings_count_for_every_container_init_ones_too():
    spec = json.loads(json.dumps(RESTRICTED))
    spec["initContainers"] = [{"name": "setup", "image": "busybox", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}]
    found = violations(spec, "restricted")
    assert any('non-default capabilities (container "setup"' in v for v in found), found
    assert any('unrestricted capabilities (container "setup"' in v for v in found), found


def test_the_api_server_refuses_a_pod_and_a_jobs_controller_records_why_with_no_pods(real_api, control_plane):
    """What the rules above stand for, on Kubernetes' own control plane: in the install's namespace (its
    Pod Security labels), a bare Pod is refused (403, the violations named); a Job of one is made, and its
    controller records why it made no pod (FailedCreate)."""
    import time

    labels = yaml.safe_load((K8S / "base" / "namespace.yaml").read_text())["metadata"]["labels"]
    code, said = real_api.request("PATCH", real_api.path("Namespace", None, "mlyard"), {"metadata": {"labels": labels}},
                                  "application/merge-patch+json")
    assert code == 200, said
    api = control_plane.api_client()
    try:
        core = kubernetes.client.CoreV1Api(api)
        with pytest.raises(kubernetes.client.ApiException) as refused:
            core.create_namespaced_pod("mlyard", {"metadata": {"name": "bare"}, "spec": BARE})
        assert refused.value.status == 403
        assert json.loads(refused.value.body)["message"].startswith(
            'pods "bare" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false')
        core.create_namespaced_pod("mlyard", {"metadata": {"name": "fine"}, "spec": {
            **RESTRICTED, "containers": [{**RESTRICTED["containers"][0], "command": ["true"]}]}})
        kubernetes.client.BatchV1Api(api).create_namespaced_job("mlyard", {"metadata": {"name": "bare"}, "spec": {
            "template": {"spec": {**BARE, "restartPolicy": "Never",
                                  "containers": [{**BARE["containers"][0], "command": ["true"]}]}}}})
        deadline = time.monotonic() + 30
        while not (events := [e for e in real_api.items("Event", "mlyard") if e["involvedObject"]["name"] == "bare"]):
            assert time.monotonic() < deadline, "the Job controller recorded nothing"
            time.sleep(0.3)
        assert [(e["reason"], e["involvedObject"]["kind"]) for e in events][:1] == [("FailedCreate", "Job")]
        assert "violates PodSecurity" in events[0]["message"]
        assert [p["metadata"]["name"] for p in real_api.items("Pod", "mlyard")] == ["fine"]
    finally:
        api.close()


# ---- every pod mlyard makes --------------------------------------------------------------------------------------


def _pool_jobs() -> list[tuple[str, dict]]:
    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    out = []
    for pool, path in (("gpu", GPU_TEMPLATE), ("cpu", CPU_TEMPLATE)):
        template = json.loads(path.read_text())
        for d in (d for d in deployments if d["work_pool"]["name"] == pool):
            values = {k: ("registry.local/mlyard:0.1.0" if k == "image" else v)
                      for k, v in (d["work_pool"].get("job_variables") or {}).items()}
            out.append((f"{d['name']}/{pool}", render_job(template, values)))
    return out


def _made_pods() -> list[tuple[str, dict]]:
    """(what, pod spec) of every pod mlyard makes: flow-run Jobs of each deployment on each Kubernetes pool, a
    multi-node training's node Job, an endpoint stage's Deployments, a notebook's StatefulSet, and the
    platform's own Deployments and StatefulSets of both overlays."""
    pods = [(what, job["spec"]["template"]["spec"]) for what, job in _pool_jobs()]
    spec = TrainingSpec(name="dist", source_uri="s3://b/algo", entry_point="train.py", nodes=2,
                        resources={"gpu_count": 2})
    coordinator = render_job(json.loads(GPU_TEMPLATE.read_text()), {**spec.job_variables(), "image": "mlyard:0.1.0"})
    job = node_jobs.NodeJob(name="mlyard-nodes-abc", namespace="mlyard", nodes=2)
    nodes = node_jobs.render(spec, {"spec": coordinator["spec"]["template"]["spec"]}, job, "abc", "run")[1]
    pods.append(("node Job", nodes["spec"]["template"]["spec"]))
    notebook = nbk.render("explore", 7, NotebookSpec(name="explore", instance_type="gpu-1"), "nb:1", "s3cret")
    pods += [(f"notebook {m['metadata']['name']}", m["spec"]["template"]["spec"]) for m in notebook
             if m["kind"] == "StatefulSet"]
    for overlay in ("dev", "prod"):
        pods += [(f"{overlay}: {o['kind']} {o['metadata']['name']}", o["spec"]["template"]["spec"])
                 for o in kustomize(K8S / "overlays" / overlay) if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    return pods


def _endpoint_pods(tmp_path) -> list[tuple[str, dict]]:
    from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints
    from mlyard.tasks import kubernetes as k8s

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        view = Endpoints(catalog).create(EndpointSpec(name="iris-api", stage=StageSpec(
            instance_type="m2.c4m8", resources=[
                StageResourceSpec(model="iris/2"), StageResourceSpec(model="b/1", gpu=1),
                *[StageResourceSpec(model=f"llm{i}/1", gpu=1, runtime={"variant": v, "args": ["serve"],
                                                                                     "image": "engine:1"})
                  for i, v in enumerate(("vllm", "nim", "cmd", "huggingface-tgi", "sglang", "modular-max",
                                         "llama-cpp"))]])),  # every runtime variant's engine pod too
            [("iris", "2"), ("b", "1"), *[(f"llm{i}", "1") for i in range(7)]])
        return [(f"endpoint {m['metadata']['name']}", m["spec"]["template"]["spec"])
                for m in k8s.render_stage(view, "default", image="mlyard:1", parameters={}) if m["kind"] == "Deployment"]
    finally:
        catalog.dispose()


def test_every_pod_mlyard_makes_passes_the_restricted_profile(tmp_path):
    pods = _made_pods() + _endpoint_pods(tmp_path)
    assert len(pods) > 30
    broken = {what: found for what, spec in pods if (found := violations(spec, "restricted"))}
    assert broken == {}, json.dumps(broken, indent=1)


def test_every_pod_mlyard_makes_is_admitted_by_the_api_servers_pod_security(tmp_path, control_plane):
    """The same pods, each created (dry run) in a namespace that enforces the restricted profile on Kubernetes'
    own API server (its PodSecurity admission, and its validation of the pod as a whole)."""
    from kubelet_node import RealApi

    api = RealApi(control_plane.url, control_plane.ssl_context())
    ns = "pod-security-all"
    api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    refused = {}
    for what, spec in _made_pods() + _endpoint_pods(tmp_path):
        account = spec.get("serviceAccountName")
        if account:  # the ServiceAccount admission plugin wants the pod's account to exist
            api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})
        named = {v["name"] for v in spec.get("volumes") or []}
        claims = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts") or []} - named
        spec = {**spec, "volumes": [*(spec.get("volumes") or []), *(  # a StatefulSet's claims, as its controller adds them
            {"name": c, "persistentVolumeClaim": {"claimName": f"{c}-made"}} for c in sorted(claims))]}
        code, doc = api.request("POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "made"}, "spec": spec})
        if code != 201:
            refused[what] = f"{code} {doc.get('message')}"
    assert refused == {}, json.dumps(refused, indent=1)


def _can_read(mode: int, uid: int, gid: int, user: int, groups: set[int]) -> bool:
    if user == 0:
        return True
    if user == uid:
        return bool(mode & stat.S_IRUSR)
    if gid in groups:
        return bool(mode & stat.S_IRGRP)
    return bool(mode & stat.S_IROTH)


def test_every_container_can_read_the_secrets_and_config_it_mounts(tmp_path):
    """The gateway, the API and the scheduler once crash-looped on a 0400 root-owned settings Secret that
    user 10001 could not read (no fsGroup)."""
    unreadable = []
    for what, pod in _made_pods() + _endpoint_pods(tmp_path):
        volumes = {v["name"]: v for v in pod.get("volumes") or [] if "secret" in v or "configMap" in v}
        pod_sc = pod.get("securityContext") or {}
        for c in pod["containers"] + (pod.get("initContainers") or []):
            sc = {**pod_sc, **(c.get("securityContext") or {})}
            user = sc.get("runAsUser", 10001)  # the images' own user where the pod names none
            groups = {sc.get("runAsGroup", user), *(pod_sc.get("supplementalGroups") or [])}
            if pod_sc.get("fsGroup") is not None:
                groups.add(pod_sc["fsGroup"])
            for mount in c.get("volumeMounts") or []:
                if mount["name"] in volumes and not _can_read(*files_as_kubelet_lays_them(pod, volumes[mount["name"]]),
                                                               user, groups):
                    unreadable.append(f"{what}: container {c['name']} (uid {user}) cannot read {mount['name']}")
    assert unreadable == [], "\n".join(unreadable)


@pytest.mark.skipif(os.geteuid() != 0, reason="changes to another user: needs root, as the tests run here")
def test_the_rule_for_secret_files_is_kubelets():
    """The model above against this machine's file system: a 0400 root-owned file is unreadable to uid 10001
    until it is group-owned by its fsGroup with group read, as kubelet makes it."""
    import subprocess
    import tempfile

    pod = {"securityContext": {"fsGroup": 10001}}
    assert files_as_kubelet_lays_them(pod, {"secret": {"defaultMode": 0o400}}) == (0o440, 0, 10001)
    assert files_as_kubelet_lays_them({}, {"secret": {"defaultMode": 0o400}}) == (0o400, 0, 0)
    folder = tempfile.mkdtemp()
    try:
        os.chmod(folder, 0o755)
        secret = os.path.join(folder, "catalog-url")
        with open(secret, "w") as out:
            out.write("postgresql://...")

        def read_as_10001() -> bool:
            return subprocess.run(["/bin/cat", secret], user=10001, group=10001,
                                  extra_groups=[], capture_output=True).returncode == 0

        for (mode, uid, gid) in (files_as_kubelet_lays_them({}, {"secret": {"defaultMode": 0o400}}),
                                 files_as_kubelet_lays_them(pod, {"secret": {"defaultMode": 0o400}})):
            os.chown(secret, uid, gid)
            os.chmod(secret, mode)
            assert read_as_10001() is _can_read(mode, uid, gid, 10001, {10001}), oct(mode)
        assert read_as_10001(), "with fsGroup the user reads it"
    finally:
        import shutil

        shutil.rmtree(folder)
