"""The documentation's Kubernetes install walk (docs/platform/kubernetes.md), followed as written against
Kubernetes' own control plane (tests/controlplane.py): the Secrets its `kubectl create secret` lines make
(every key, by those names), the values file it writes, `mlyard k8s apply` of it (the real Job controller
makes the migration Job's pod, and a node of tests/kubelet_node.py runs it as its user, with its volumes
and a read-only root; the workloads' controllers make every other pod, which the API server admits under
the namespace's restricted profile and the node reports started, so the apply's rollouts finish), then step 4 on the cluster's Prefect. Steps 5 and 6 use MLYARD_API_URL and MLYARD_UPLOAD_URI as
tests/mlyard/test_workstation.py and tests/infra/test_uploads.py exercise them.

The one departure: the walk's databases are PostgreSQL's (the dev overlay's StatefulSet, whose pod no node
here runs); here the Secrets name SQLite files in a folder of the pods' user instead."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import yaml
from kube_cluster import ROOT
from kubelet_node import ClusterApi, NodeKubelet

from tests.infra.test_k8s_install import _to_pods, clusters_prefect, mlyard  # noqa: F401 - a fixture

README = (ROOT / "docs" / "platform" / "kubernetes.md").read_text()


def _walk() -> str:
    return README.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")


def _secrets(walk: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (type, keys) of every `kubectl -n mlyard create secret` of the walk."""
    out = {}
    for kind, name, rest in re.findall(r"kubectl -n mlyard create secret (generic|docker-registry) (\S+)(.*)", walk):
        if kind == "docker-registry":
            out[name] = ("kubernetes.io/dockerconfigjson", [".dockerconfigjson"])
        else:
            out[name] = ("Opaque", re.findall(r"--from-literal=([\w.-]+)=", rest))
    return out


def _secret_refs(node) -> list[tuple[str, str | None]]:
    """(Secret, key or None) of every secretKeyRef, secret volume and imagePullSecret under `node`."""
    found: list[tuple[str, str | None]] = []
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            found.append((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        if "secretName" in node:
            found.append((node["secretName"], None))
        for ref in node.get("imagePullSecrets") or []:
            found.append((ref["name"], None))
        for value in node.values():
            found += _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _secret_refs(value)
    return found


def test_the_walk_installs_the_platform_as_written(tmp_path, clusters_prefect, control_plane):  # noqa: F811
    walk = _walk()
    values = yaml.safe_load(walk.split("cat > values.yaml <<'YAML'", 1)[1].split("\nYAML", 1)[0])
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    secrets = _secrets(walk)
    assert set(secrets) == {"regcred", "mlyard-postgres", "mlyard-prefect", "mlyard-mlflow", "mlyard-settings"}
    assert "regcred" in values["image_pull_secrets"], "the pull Secret the values name is made in step 2"

    databases = tmp_path / "databases"
    databases.mkdir(mode=0o700)
    urls = {"database-url": f"sqlite+aiosqlite:///{databases}/prefect.db",
            "backend-store-uri": f"sqlite:///{databases}/mlflow.db",
            "mlyard_catalog_url": f"sqlite:///{databases}/catalog.db"}
    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    kubeconfig = control_plane.kubeconfig(path=tmp_path / "kubeconfig")
    _to_pods(databases)
    node = NodeKubelet(control_plane, "walk", str(ROOT), binds=(str(databases),), runs=lambda pod: any(
        o["kind"] == "Job" for o in pod["metadata"].get("ownerReferences") or []), starts=lambda pod: True)
    try:
        api.create("Namespace", "v1", None, {"metadata": {"name": "mlyard"}})  # kubectl create namespace
        for name, (kind, keys) in secrets.items():
            data = {key: urls.get(key, json.dumps({"auths": {}}) if key == ".dockerconfigjson" else f"{key}-value")
                    for key in keys}
            api.create("Secret", "v1", "mlyard", {"metadata": {"name": name}, "type": kind, "data": {
                k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        # 3. the platform, as `mlyard k8s apply -f values.yaml` makes it
        applied = mlyard("k8s", "apply", "-f", "values.yaml", "--kubeconfig", str(kubeconfig), cwd=tmp_path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert all(f"migrations: {db}:" in applied.stdout for db in ("catalog", "mlflow", "prefect")), applied.stdout
        job_pod = next(p for p in api.items("Pod", "mlyard") if p["metadata"]["name"].startswith("mlyard-migrate-"))
        assert job_pod["spec"]["securityContext"]["runAsUser"] == 10001 and job_pod["status"]["phase"] == "Succeeded"
        workloads = [(kind, o) for kind in ("Deployment", "StatefulSet") for o in api.items(kind, "mlyard")]
        deadline = time.monotonic() + 60  # every workload's pods made by its controller: admitted
        while {(k, o["metadata"]["name"]) for k, o in workloads} != _with_pods(api, workloads):
            refused = [e["message"] for e in api.request("GET", "/api/v1/namespaces/mlyard/events")[1]["items"]
                       if e["reason"] == "FailedCreate"]
            assert not refused and time.monotonic() < deadline, refused or "pods never made"
            time.sleep(0.5)
        refs = [r for _, obj in workloads for r in _secret_refs(obj)]  # what the pods read, the walk made
        assert len(refs) > 10 and {name for name, _ in refs} >= {"mlyard-prefect", "mlyard-settings", "regcred"}
        for name, key in refs:
            assert name in secrets and (key is None or key in secrets[name][1]), (name, key)
        # 4. the pools, their deployments and the crash automation on the cluster's Prefect
        pools = mlyard("k8s", "apply", "-f", "values.yaml", "--kubeconfig", str(kubeconfig), "--prefect-api-url",
                       clusters_prefect, cwd=tmp_path)
        assert pools.returncode == 0 and "registered on" in pools.stdout, pools.stdout + pools.stderr
    finally:
        api.drop_namespace("mlyard", timeout=120)
        node.close()
    # 5 and 6: through the platform's mlyard API, with the run's inputs uploaded (the tests named above)
    for variable in ("MLYARD_API_URL", "MLYARD_INTERNAL_TOKEN", "MLYARD_UPLOAD_URI", "MLYARD_PREFECT_API_URL"):
        assert f"{variable}=" in walk, variable
    assert Path(ROOT / "tests" / "mlyard" / "test_workstation.py").is_file()


def _with_pods(api: ClusterApi, workloads: list[tuple[str, dict]]) -> set[tuple[str, str]]:
    """The workloads whose controllers have made all their pods (a Deployment's through its ReplicaSet)."""
    pods = api.items("Pod", "mlyard")
    sets = {o["metadata"]["name"]: o["metadata"]["ownerReferences"][0]["name"] for o in
            api.request("GET", "/apis/apps/v1/namespaces/mlyard/replicasets")[1]["items"]}
    owner = {}
    for pod in pods:
        ref = (pod["metadata"].get("ownerReferences") or [{}])[0]
        owner.setdefault((ref.get("kind") == "ReplicaSet" and "Deployment" or ref.get("kind"),
                          sets.get(ref.get("name"), ref.get("name"))), []).append(pod)
    return {(kind, o["metadata"]["name"]) for kind, o in workloads
            if len(owner.get((kind, o["metadata"]["name"]), [])) >= (o["spec"].get("replicas") or 1)}
