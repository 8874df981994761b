"""What a platform team applies (infra/k8s): every object the overlays render with the real `kubectl
kustomize` (kubectl 1.32, kustomize v5), strictly valid for Kubernetes 1.30 and 1.33, and built as the
issue asks: probes, resources, non-root, a Service where it serves, Secrets by name only, RBAC that
grants the workers exactly what they use. No cluster: applying them is the emulator's part.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
VERSIONS = ("1.30", "1.33")
SECRETS = {"mlyard-prefect", "mlyard-mlflow", "mlyard-settings", "mlyard-postgres"}  # infra/README.md names them
WORKLOADS = ("Deployment", "StatefulSet")


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl >= 1.27 (kustomize v5) is needed to render infra/k8s"
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=["dev", "prod"])
def overlay(request):
    return request.param, render(K8S / "overlays" / request.param)


def _by(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_every_object_is_strictly_valid(overlay):
    _, objs = overlay
    assert len(objs) >= 20
    for obj in objs:
        assert obj["kind"] != "Secret", "Secrets are referenced by name, never rendered"
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "mlyard", obj["metadata"]["name"]


def test_workloads_have_probes_resources_and_run_as_non_root(overlay):
    _, objs = overlay
    services = [s for s in objs if s["kind"] == "Service"]
    for w in (o for o in objs if o["kind"] in WORKLOADS):
        name, pod = w["metadata"]["name"], w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in pod["containers"]:
            assert c["readinessProbe"] and c["livenessProbe"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert not c["image"].endswith(":latest") and ":" in c["image"], f"{name}: pinned image"
            if c.get("ports") and name != "prefect-worker-gpu" and name != "prefect-worker-cpu":
                labels = w["spec"]["template"]["metadata"]["labels"]
                assert any(s["spec"]["selector"].items() <= labels.items() for s in services), f"{name}: a Service"


def test_secrets_are_referenced_by_name_only(overlay):
    _, objs = overlay
    named = set()
    for w in (o for o in objs if o["kind"] in WORKLOADS):
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    named.add(ref["name"])
                else:
                    assert not any(word in e["name"] for word in ("PASSWORD", "SECRET_ACCESS", "AUTH_STRING"))\
                        or e["name"].endswith(("_SECRET_NAME", "_SECRET_KEY")), f"{e['name']} inlined"
        for v in pod.get("volumes", []):
            if "secret" in v:
                named.add(v["secret"]["secretName"])
    assert named and named <= SECRETS, named - SECRETS


def test_workers_get_exactly_what_they_use(overlay):
    _, objs = overlay
    roles, bindings = _by(objs, "Role"), _by(objs, "RoleBinding")
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    rules = {(g, r): set(rule["verbs"]) for rule in roles["prefect-worker"]["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    # prefect-kubernetes 0.8: creates, reads and deletes the Jobs of flow runs; its observer lists and
    # watches pods and Jobs and reads pod logs when a run crashes; its handlers post Events
    assert rules == {("batch", "jobs"): {"get", "list", "watch", "create", "update", "patch", "delete"},
                     ("", "pods"): {"get", "list", "watch"}, ("", "pods/log"): {"get", "list", "watch"},
                     ("", "pods/status"): {"get", "list", "watch"}, ("", "events"): {"get", "list", "watch", "create"}}
    subjects = {s["name"] for s in bindings["prefect-worker"]["subjects"]}
    deployments = _by(objs, "Deployment")
    for pool in ("gpu", "cpu"):
        worker = deployments[f"prefect-worker-{pool}"]["spec"]["template"]["spec"]
        assert worker["serviceAccountName"] in subjects
        assert worker["containers"][0]["command"][:6] == ["python", "-m", "mlyard.tasks.pool_worker", "--pool", pool, "--type"]
    scheduler = {(g, r): set(rule["verbs"]) for rule in roles["mlyard-scheduler"]["rules"]
                 for g in rule["apiGroups"] for r in rule["resources"]}
    assert scheduler == {("coordination.k8s.io", "leases"): {"get", "create", "update"},  # its Lease; why a run waits
                         ("batch", "jobs"): {"get"}, ("", "pods"): {"list"}, ("kueue.x-k8s.io", "workloads"): {"list"}}
    # the endpoint flows' runs: server-side apply (patch), read back, list by labels and delete a stage's objects
    endpoints = {(g, r): set(rule["verbs"]) for rule in roles["mlyard-endpoints"]["rules"]
                 for g in rule["apiGroups"] for r in rule["resources"]}
    assert endpoints == {**{(g, r): {"get", "list", "create", "patch", "delete"} for g, r in (
        ("apps", "deployments"), ("", "services"), ("autoscaling", "horizontalpodautoscalers"),
        ("networking.k8s.io", "networkpolicies"), ("policy", "poddisruptionbudgets"))},
        ("gateway.networking.k8s.io", "httproutes"): {"get", "create", "patch", "delete"}}
    assert {s["name"] for s in bindings["mlyard-endpoints"]["subjects"]} == {"mlyard-endpoints"}
    # where user code runs (every flow-run pod by default, a multi-node training's nodes): no rights at all
    assert "mlyard-run" in _by(objs, "ServiceAccount") and "mlyard-run" not in roles
    assert not [b for b in bindings.values() if any(s["name"] == "mlyard-run" for s in b["subjects"])]
    # the API makes and deletes registry accounts' Secrets and reads none (`get` would read the settings);
    # its replicas elect the crash follower's one writer
    api = {(g, r): set(rule["verbs"]) for rule in roles["mlyard-api"]["rules"]
           for g in rule["apiGroups"] for r in rule["resources"]}
    assert api == {("", "secrets"): {"create", "delete"}, ("coordination.k8s.io", "leases"): {"get", "create", "update"},
                   ("apps", "statefulsets"): {"get"},  # a notebook's health: its ready replicas
                   ("", "pods"): {"list"}, ("", "pods/log"): {"get"}}  # the runs' records, for `mlyard logs`
    # the backup and restore Jobs: mlyard's Secrets read and made again, the claims listed; nothing else
    backup = {(g, r): set(rule["verbs"]) for rule in roles["mlyard-backup"]["rules"]
              for g in rule["apiGroups"] for r in rule["resources"]}
    assert backup == {("", "secrets"): {"list", "create", "update"}, ("", "persistentvolumeclaims"): {"list"}}
    # the notebook flow's runs: a notebook's objects applied (read, then patch) and deleted; its pod deleted to reboot
    notebooks = {(g, r): set(rule["verbs"]) for rule in roles["mlyard-notebooks"]["rules"]
                 for g in rule["apiGroups"] for r in rule["resources"]}
    assert notebooks == {**{(g, r): {"get", "create", "patch", "delete"} for g, r in (
        ("apps", "statefulsets"), ("", "services"), ("", "secrets"), ("networking.k8s.io", "networkpolicies"))},
        ("", "pods"): {"delete"}, ("", "persistentvolumeclaims"): {"delete"}}
    flows = [d for d in yaml.safe_load((K8S.parent / "prefect.yaml").read_text())["deployments"]
             if d["entrypoint"].startswith("mlyard.flows.endpoint_") and d["work_pool"]["name"] != "local"]
    assert len(flows) == 10 and {d["work_pool"]["job_variables"]["service_account_name"] for d in flows} == {"mlyard-endpoints"}
    rag = next(d for d in yaml.safe_load((K8S.parent / "prefect.yaml").read_text())["deployments"]
               if d["name"] == "rag-sync-kubernetes")  # a RAG's query service: a Deployment, Service, NetworkPolicy
    assert rag["work_pool"]["job_variables"]["service_account_name"] == "mlyard-endpoints"


def test_the_gateway_is_replicated_and_the_databases_follow_the_overlay(overlay):
    name, objs = overlay
    deployments = _by(objs, "Deployment")
    gateway = deployments["gateway"]["spec"]
    assert gateway["replicas"] >= 2 and gateway["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert _by(objs, "PodDisruptionBudget")["gateway"]["spec"]["minAvailable"] == 1
    assert deployments["scheduler"]["spec"]["replicas"] == 2  # one holds the Lease, one waits
    server_env = {e["name"]: e for e in deployments["prefect-server"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mlyard-prefect"
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["key"] == "auth-string"
    postgres = _by(objs, "StatefulSet").get("postgres")
    if name == "dev":
        assert postgres and "pgvector" in postgres["spec"]["template"]["spec"]["containers"][0]["image"]
    else:
        assert postgres is None and gateway["replicas"] == 3  # external databases; more gateway replicas


def test_the_kueue_component_names_the_gpu_queue():
    objs = render(K8S / "components" / "kueue") if False else [  # a Component renders only inside an overlay
        d for d in yaml.safe_load_all((K8S / "components" / "kueue" / "queues.yaml").read_text()) if d]
    kinds = {o["kind"]: o for o in objs}
    assert set(kinds) == {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
    assert kinds["LocalQueue"]["spec"]["clusterQueue"] == kinds["ClusterQueue"]["metadata"]["name"]
    covered = kinds["ClusterQueue"]["spec"]["resourceGroups"][0]["coveredResources"]
    assert "nvidia.com/gpu" in covered


def test_the_dev_postgres_makes_every_database_the_readmes_secrets_name():
    """The install walk (docs/platform/kubernetes.md) names a database per Secret (prefect, mlflow, catalog, and RAGs'
    vectors): the dev overlay's PostgreSQL must make each, as its image's POSTGRES_DB makes only one."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "docs" / "platform" / "kubernetes.md").read_text()
    named = set(re.findall(r"@postgres:5432/(\w+)", readme))
    init = _by(render(K8S / "overlays" / "dev"), "ConfigMap")["postgres-init"]["data"]["10-databases.sql"]
    sts = _by(render(K8S / "overlays" / "dev"), "StatefulSet")["postgres"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in sts["containers"][0]["env"]}
    first = env.get("POSTGRES_DB") or env["POSTGRES_USER"]  # the image's own database (POSTGRES_DB, else the user's)
    made = set(re.findall(r"CREATE DATABASE (\w+)", init)) | {first}
    assert named == {"prefect", "mlflow", "catalog", "mlyard"} and named <= made, (named, made)
    assert f"\\connect {first}\nCREATE EXTENSION IF NOT EXISTS vector" in init, "RAGs' vectors: pgvector there"
    assert {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True} in \
        sts["containers"][0]["volumeMounts"]


def test_only_the_namespaces_pods_reach_the_platforms_services_but_the_gateway(overlay):
    """Prefect (its admin API), MLflow, the mlyard API and the dev PostgreSQL admit pods of the namespace
    alone, on their Service's port; the gateway, the endpoints' front door, stays open. Replicated services
    keep a PodDisruptionBudget."""
    name, objs = overlay
    policies = _by(objs, "NetworkPolicy")
    services = _by(objs, "Service")
    guarded = {"prefect-server", "mlflow", "mlyard-api"} | ({"postgres"} if name == "dev" else set())
    for service in guarded:
        policy = policies[service]["spec"]
        assert policy["podSelector"]["matchLabels"] == services[service]["spec"]["selector"], service
        assert policy["policyTypes"] == ["Ingress"] and len(policy["ingress"]) == 1, service
        rule = policy["ingress"][0]
        assert rule["from"] == [{"podSelector": {}}], f"{service}: this namespace's pods only"
        assert [p["port"] for p in rule["ports"]] == [p["port"] for p in services[service]["spec"]["ports"]]
    gateway = policies["gateway"]["spec"]  # open to all, on its port (the whole namespace is denied by default:
    assert gateway["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]  # tests/infra/test_network_policies.py)
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    budgets = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for p in _by(objs, "PodDisruptionBudget").values()}
    replicated = {d["metadata"]["name"] for d in _by(objs, "Deployment").values() if d["spec"].get("replicas", 1) > 1}
    assert replicated <= budgets, replicated - budgets
