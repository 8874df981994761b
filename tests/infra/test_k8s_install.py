"""`mlyard k8s render|apply` as a platform engineer runs them: fresh processes, a values file, and a
Kubernetes API: Kubernetes' own control plane (tests/controlplane.py: its admission, RBAC, controllers and
scheduler), reached through a kubeconfig like any cluster, with one node played here (tests/kubelet_node.py)
that runs the install's Jobs' pods; the manifests are checked strictly with kubernetes-validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from controlplane import free_port
from kubelet_node import ClusterApi, NodeKubelet

ROOT = Path(__file__).resolve().parents[2]
MLYARD = str(Path(sys.executable).parent / "mlyard")

VALUES = {"overlay": "prod", "namespace": "ml-platform", "image": "registry.example/team/mlyard:1.2.3",
          "images": {"training_cuda": "registry.example/team/mlyard-training:1.2.3-cuda",
                     "serving": "registry.example/team/mlyard-serving:1.2.3"},
          "runtime_images": {"vllm": "registry.example/team/vllm-openai:0.11.0"},
          "image_pull_secrets": ["regcred"], "gateway_replicas": 4, "storage_class": "fast-ssd",
          "secrets": {"prefect": "pf", "mlflow": "mf", "settings": "ms", "postgres": None},
          "gpu": {"per_node": 4, "nodes": 3, "cpus_per_node": 48, "memory_gib_per_node": 384},
          "pool_concurrency": {"cpu": 30}}


def mlyard(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run([MLYARD, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=180)


@pytest.fixture
def values_file(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(VALUES))
    return path


def test_render_sets_what_the_values_name(tmp_path, values_file):
    out = mlyard("k8s", "render", "-f", str(values_file), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in objs:
        for version in ("1.30", "1.33"):
            kubernetes_validate.validate(obj, version, strict=True)
    assert objs[0]["kind"] == "Namespace" and objs[0]["metadata"]["name"] == "ml-platform"
    assert all(o["metadata"].get("namespace") == "ml-platform" for o in objs[1:])
    text = json.dumps(objs)
    for default in ("mlyard-prefect", "mlyard-mlflow", "mlyard-settings", "mlyard:0.1.0"):
        assert default not in text, f"{default} left in the render"
    workloads = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"}
    assert "postgres" not in {o["metadata"]["name"] for o in objs}  # prod: external databases
    assert workloads["gateway"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert workloads["gateway"]["containers"][0]["image"] == "registry.example/team/mlyard:1.2.3"
    assert next(o for o in objs if o["metadata"]["name"] == "gateway" and o["kind"] == "Deployment")["spec"]["replicas"] == 4
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlyard-config")["data"]
    assert config["MLYARD_IMAGE"] == "registry.example/team/mlyard:1.2.3"  # endpoint stages no longer fall back
    assert config["MLYARD_SERVING_IMAGE"] == "registry.example/team/mlyard-serving:1.2.3"  # to mlyard:0.1.0
    assert json.loads(config["MLYARD_RUNTIME_IMAGES"]) == {"vllm": "registry.example/team/vllm-openai:0.11.0"}
    worker_env = {e["name"]: e for e in workloads["prefect-worker-gpu"]["containers"][0]["env"]}
    assert worker_env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"]["value"] == "pf"
    assert worker_env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"] == "ml-platform"
    binding = next(o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "prefect-worker")
    assert {s["namespace"] for s in binding["subjects"]} == {"ml-platform"}


def test_the_pods_the_platforms_flows_make_read_the_settings_secret_the_values_name(monkeypatch):
    """The values name the settings Secret `ms`: the pools' job templates mount it, and the pods the endpoint and
    RAG flows make (their settings read the ConfigMap's MLYARD_SETTINGS_SECRET) name it; no `mlyard-settings` left."""
    from mlyard.core.settings import Settings
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.core.specs.rag import RagSpec
    from mlyard.prefect_cluster import cluster_pool_template
    from mlyard.prefect_setup import CPU_TEMPLATE, GPU_TEMPLATE
    from mlyard.tasks import rag_cluster
    from mlyard.tasks.cluster import render
    from mlyard.tasks.kubernetes import render_stage

    values = ClusterValues(**VALUES)
    for template in (GPU_TEMPLATE, CPU_TEMPLATE):
        pod = cluster_pool_template(template, values, values.image)["job_configuration"]["job_manifest"]["spec"]
        assert {"name": "settings", "secret": {"secretName": "ms", "optional": True, "defaultMode": 256}} in \
            pod["template"]["spec"]["volumes"], template
    config = next(o for o in render(values) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlyard-config")
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    secret = Settings().settings_secret
    assert secret == "ms"
    view = {"name": "digits", "stages": [{"name": "blue", "instance_type": "local", "resources": [{
        "id": 1, "model": "digits/1", "cpu": 1, "memory": "1Gi", "gpu": 0, "pods": 1, "pod_autoscaler": {},
        "runtime": None}]}], "max_request_bytes": None}
    made = [*render_stage(view, "blue", namespace="ml-platform", settings_secret=secret),
            *rag_cluster.render("docs", 5, RagSpec(name="docs", path="s3://b/docs/", llm={"endpoint": "chat"}),
                                image="i:1", serving_image="i:1", namespace="ml-platform", settings_secret=secret)]
    text = json.dumps(made)
    assert '"ms"' in text and "mlyard-settings" not in text


def test_every_image_and_pull_secret_comes_from_the_values(tmp_path):
    """A mirrored registry: the engines' images too (Prefect's server, oauth2-proxy, the dev PostgreSQL) come from the
    values, and every pod has the pull Secrets."""
    mirror = {"prefect": "mirror.example/prefect:3.8.8-python3.11", "oauth2_proxy": "mirror.example/oauth2-proxy:v7.8.1",
              "postgres": "mirror.example/pgvector:0.8.0-pg16"}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**VALUES, "overlay": "dev", "secrets": {**VALUES["secrets"], "postgres": "pg"},
                                    "sign_in": True, "images": {**VALUES["images"], **mirror}}))
    out = mlyard("k8s", "render", "-f", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    pods = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in yaml.safe_load_all(out.stdout)
            if o and o["kind"] in ("Deployment", "StatefulSet", "Job")}
    images = {c["image"] for name, pod in pods.items() for c in [*pod.get("initContainers", []), *pod["containers"]]
              if not name.startswith("mlyard-release-")}
    assert images == {"registry.example/team/mlyard:1.2.3", *mirror.values()}, images
    checked = {pod["containers"][0]["image"] for name, pod in pods.items() if name.startswith("mlyard-release-")}
    assert checked == {"registry.example/team/mlyard:1.2.3", *VALUES["images"].values(), "mlyard-training:0.1.0-cpu",
                       "mlyard-notebook:0.1.0"}, "each of mlyard's images checked for its release"
    assert {name for name, pod in pods.items() if pod.get("imagePullSecrets") != [{"name": "regcred"}]} == set()


def test_a_kueue_queue_adds_the_queues_and_names_it_to_every_pod(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**VALUES, "kueue_queue": "gpu-team"}))
    out = mlyard("k8s", "render", "-f", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kueue = {o["kind"]: o for o in objs if o["apiVersion"].startswith("kueue.x-k8s.io/")}
    assert set(kueue) == {"ResourceFlavor", "ClusterQueue", "LocalQueue"}
    assert kueue["LocalQueue"]["metadata"] == {"name": "gpu-team", "namespace": "ml-platform"}
    assert kueue["LocalQueue"]["spec"]["clusterQueue"] == kueue["ClusterQueue"]["metadata"]["name"]
    quota = {r["name"]: r["nominalQuota"] for r in kueue["ClusterQueue"]["spec"]["resourceGroups"][0]["flavors"][0]["resources"]}
    assert quota == {"nvidia.com/gpu": "12", "cpu": "144", "memory": "1152Gi"}, "the values' 3 nodes of 4 GPUs, 48 CPUs, 384 GiB"
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlyard-config")
    assert config["data"]["MLYARD_KUEUE_QUEUE"] == "gpu-team"  # every pod, a tuning's too, labels its trials


def test_every_database_user_gets_its_share_and_the_shares_fit_the_servers_connections(tmp_path, values_file):
    """The Prefect server's, each MLflow worker's, each platform replica's and each run pod's pool, set from
    values.database_connections; their sum over the replicas and the pools' runs fits its limit."""
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.prefect_cluster import GPU_TEMPLATE, cluster_pool_template
    from mlyard.tasks.cluster import render
    from mlyard.tasks.cluster_connections import budget

    out = mlyard("k8s", "render", "-f", str(values_file), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    env = {o["metadata"]["name"]: {e["name"]: e.get("value") for e in o["spec"]["template"]["spec"]["containers"][0]
                                   .get("env", [])} for o in objs if o["kind"] == "Deployment"}
    assert (env["prefect-server"]["PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE"],
            env["prefect-server"]["PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW"]) == ("5", "5")
    assert (env["mlflow"]["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"], env["mlflow"]["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]) \
        == ("2", "1")
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlyard-config")
    assert config["data"]["MLYARD_CATALOG_CONNECTIONS"] == "3"
    values = ClusterValues(**VALUES)
    run_env = cluster_pool_template(GPU_TEMPLATE, values, "x")["variables"]["properties"]["env"]["default"]
    assert run_env == {"MLYARD_CATALOG_CONNECTIONS": "1"}
    # 1 Prefect server, 2 MLflow replicas of 2 workers, 2 API + 4 gateway + 2 scheduler replicas, 30 cpu runs
    # and 12 gpu runs (the values' GPUs, its pool having no limit)
    parts = budget(render(values), values)
    assert parts == {"prefect": 10, "mlflow": 12, "platform": 24, "runs": 42} and sum(parts.values()) <= 100


@pytest.mark.parametrize(("change", "field"), [
    ({"secrets": {"prefect": ""}}, "secrets.prefect"),
    ({"overlay": "staging"}, "overlay"),
    ({"gateway_replicas": 1}, "gateway_replicas"),
    ({"namespace": "ML Platform"}, "namespace"),
    ({"overlay": "dev", "secrets": {"postgres": None}}, "secrets.postgres"),
    ({"image_pull_secrets": ["Reg Cred"]}, "image_pull_secrets"),
    ({"pool_concurrency": {"cpu": 200}}, "database_connections.limit: 100"),  # 12 gpu runs + 200 cpu ones
    ({"pool_concurrency": {"cpu": None}}, "pool_concurrency.cpu"),  # unbounded runs, unbounded connections
])
def test_bad_values_are_refused_in_one_line(tmp_path, change, field):
    values = {**VALUES, **change, "secrets": {**VALUES["secrets"], **change.get("secrets", {})}}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = mlyard("k8s", "render", "-f", str(path), cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and field in out.stderr, out.stderr
    assert not out.stdout


NODES = iter(range(1, 1000))
UNPULLED = "registry.example/team/mlyard:9.9.9"  # an image the cluster's node cannot pull


OTHER_RELEASE = "mlyard-serving:0.0.9"  # a serving image of another release: the nodes run `other_release` for it


@pytest.fixture(scope="module")
def other_release(tmp_path_factory):
    """This checkout as an image of release 0.0.9 holds it (tests/releases.py)."""
    from releases import release_tree

    return release_tree(tmp_path_factory.mktemp("other-release"), "HEAD", release="0.0.9")


@pytest.fixture
def cluster(tmp_path, control_plane, other_release):
    """The control plane with a node whose kubelet runs the Jobs' pods here as their users, with their volumes
    and read-only roots (tests/kubelet_sandbox.py); it reports the Deployments' pods started and ready (their
    processes do not run here), but those of an image it cannot pull (UNPULLED), which stay ContainerCreating. The migration Job's databases are SQLite files in a folder of the
    pods' user, named by the Secrets as a cluster's name PostgreSQL ones, and bound into its pod as a
    database server would be reached. The install's namespace and the node are gone after the test."""
    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    kubeconfig = control_plane.kubeconfig(path=tmp_path / "kubeconfig")
    databases = tmp_path / "databases"
    databases.mkdir(mode=0o700)
    _to_pods(databases)
    name = f"install-{next(NODES)}"
    node = NodeKubelet(control_plane, name, str(ROOT), binds=(str(databases),), runs=lambda pod: any(
        o["kind"] == "Job" for o in pod["metadata"].get("ownerReferences") or []), capacity={"cpu": "32", "memory": "128Gi"},
        starts=lambda pod: all(c["image"] != UNPULLED for c in pod["spec"]["containers"]),
        images={OTHER_RELEASE: str(other_release)})
    try:
        yield api, kubeconfig
    finally:
        api.drop_namespace("ml-platform")
        node.close()


# The keys each of VALUES's Secrets must hold (infra/README.md lists them): what the pods read by
# secretKeyRef, and the settings Secret's credentials the gateway and stage pods refuse to start without
KEYS = {"pf": ("database-url", "auth-string"), "mf": ("backend-store-uri", "artifacts-destination"),
        "ms": ("mlyard_catalog_url", "mlyard_s3_access_key_id", "mlyard_s3_secret_access_key",
               "mlyard_internal_token", "mlyard_replica_token"),
        "regcred": (".dockerconfigjson",),
        "mlyard-oidc": ("issuer-url", "client-id", "client-secret", "cookie-secret", "redirect-url",
                        "mlflow-redirect-url")}


def _databases(folder: Path) -> dict[str, str]:
    folder = folder / "databases"
    return {"database-url": f"sqlite+aiosqlite:///{folder}/prefect.db", "backend-store-uri": f"sqlite:///{folder}/mlflow.db",
            "mlyard_catalog_url": f"sqlite:///{folder}/catalog.db"}


def _to_pods(databases: Path) -> None:
    """The databases' files are the pods' user's (10001), as a database server's files are its own: a
    file this test made or read as root (a catalog of the previous release, SQLite's journal) is handed over."""
    for path in (databases, *databases.rglob("*")):
        os.chown(path, 10001, 10001)


def _secret(api: ClusterApi, namespace: str, name: str, folder: Path, without: str | None = None) -> None:
    """A Secret as the platform engineer makes it (`kubectl create secret`), in its namespace (made first if
    need be); the image pull Secret's a registry credential the API server checks the shape of."""
    import base64

    urls = {**_databases(folder), ".dockerconfigjson": json.dumps({"auths": {"registry.example": {
        "auth": base64.b64encode(b"ci:token").decode()}}})}
    if (folder / "databases").is_dir():
        _to_pods(folder / "databases")
    if api.get_object("Namespace", None, namespace) is None:  # type: ignore[arg-type]
        api.create("Namespace", "v1", None, {"metadata": {"name": namespace}})
    data = {key: base64.b64encode(urls.get(key, "x").encode()).decode() for key in KEYS[name] if key != without}
    kind = "kubernetes.io/dockerconfigjson" if name == "regcred" else "Opaque"
    api.create("Secret", "v1", namespace, {"metadata": {"name": name}, "type": kind, "data": data}, "kubectl-create")


SECRETS = [("Secret", n) for n in ("mf", "ms", "pf", "regcred")]


def test_apply_needs_the_secrets_then_applies_everything_and_a_second_apply_changes_nothing(tmp_path, values_file,
                                                                                            cluster):
    api, kubeconfig = cluster
    first = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert first.returncode == 2 and "Traceback" not in first.stderr
    assert "pf, mf, ms, regcred" in first.stderr or all(n in first.stderr for n in ("pf", "mf", "ms", "regcred"))
    assert api.get_object("Namespace", None, "ml-platform") is not None  # type: ignore[arg-type]
    assert api.made("ml-platform") == [], "nothing but the namespace before the Secrets"

    for name in ("pf", "mf", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    _secret(api, "ml-platform", "ms", tmp_path, without="mlyard_replica_token")  # stage pods would refuse to start
    lacking = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert lacking.returncode == 2 and len(lacking.stderr.strip().splitlines()) == 1, lacking.stderr
    assert "Secret ms without key(s) mlyard_replica_token" in lacking.stderr and "nothing else" in lacking.stderr
    assert api.made("ml-platform") == SECRETS
    api.delete(("Secret", "ml-platform", "ms"))
    _secret(api, "ml-platform", "ms", tmp_path)
    second = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    rows = json.loads(second.stdout)
    assert len(rows) >= 20 and {r["outcome"] for r in rows[1:]} == {"created"}
    said = next(r for r in rows if r["name"] == "mlyard-migrate")["said"]  # the databases the Secrets name, made
    assert [line.split(":")[0] for line in said] == ["catalog", "mlflow", "prefect"], said
    assert all("migrated from an empty database" in line for line in said), said
    kinds = [r["kind"] for r in rows]
    assert kinds.index("Job") < min(i for i, k in enumerate(kinds) if k == "Deployment"), "the schemas come first"
    rv = api.versions("ml-platform")

    third = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert {r["outcome"] for r in json.loads(third.stdout)} == {"unchanged"}
    assert api.versions("ml-platform") == rv, "a second apply changed nothing"

    assert {r["name"] for r in rows if r["name"].startswith("mlyard-release-")} == {
        "mlyard-release-image", "mlyard-release-training-cpu", "mlyard-release-training-cuda", "mlyard-release-serving",
        "mlyard-release-notebook"}, "a Job per image of mlyard's, each run in its image"
    assert kinds.index("Job") < rows.index(next(r for r in rows if r["name"] == "mlyard-migrate"))
    gateway = api.get("Deployment", "ml-platform", "gateway")
    assert gateway["spec"]["replicas"] == 4
    assert api.owner_of("Deployment", "ml-platform", "gateway", "spec", "replicas") == ["mlyard"]
    assert [m["operation"] for m in gateway["metadata"]["managedFields"] if m["manager"] == "mlyard"] == ["Apply"]


def test_an_image_of_another_release_stops_the_apply_before_any_schema_or_rollout(tmp_path, values_file, cluster):
    """The serving image of 0.0.9 beside manifests of this release: its check Job says so, and the apply stops
    in one line naming the field and both releases before the migration Job or any workload is made."""
    from mlyard.core.names import RELEASE

    api, kubeconfig = cluster
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    values = yaml.safe_load(values_file.read_text())
    values.setdefault("images", {})["serving"] = OTHER_RELEASE
    values_file.write_text(yaml.safe_dump(values))
    refused = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stdout + refused.stderr
    assert (f"images.serving carries mlyard 0.0.9, and the install's manifests are mlyard {RELEASE}'s: set "
            f"images.serving to mlyard {RELEASE}'s image") in refused.stderr and "nothing else was applied" in refused.stderr
    made = api.made("ml-platform")
    assert not [o for o in made if o[0] in ("Deployment", "StatefulSet") or o == ("Job", "mlyard-migrate")], made

    values["images"]["serving"] = f"mlyard-serving:{RELEASE}"
    values_file.write_text(yaml.safe_dump(values))
    applied = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"images: 5 carry mlyard {RELEASE}" in applied.stdout


def test_sign_in_puts_every_ui_behind_oauth2_proxy_once_its_secret_is_there(tmp_path, cluster):
    """`sign_in: true`: the sign-in component (infra/k8s/components/sign-in) rendered strictly valid and under
    the restricted profile, and applied to the cluster once the Secret mlyard-oidc holds every key it names:
    oauth2-proxy beside the front door (the Prefect UI, the dashboard, notebooks) and beside the MLflow UI."""
    from pod_security import violations

    api, kubeconfig = cluster
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**VALUES, "sign_in": True}))
    out = mlyard("k8s", "render", "-f", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in objs:
        for version in ("1.30", "1.33"):
            kubernetes_validate.validate(obj, version, strict=True)
        assert obj["kind"] == "Namespace" or obj["metadata"].get("namespace") == "ml-platform", obj["metadata"]
    pods = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"}
    for name in ("mlyard-api", "mlflow-ui"):
        assert violations(pods[name], "restricted") == [], name
        assert [c["name"] for c in pods[name]["containers"]][1] == "sign-in"
        assert pods[name]["containers"][0]["image"] == "registry.example/team/mlyard:1.2.3"
    ui = pods["mlflow-ui"]["containers"]
    assert "--host 127.0.0.1" in ui[0]["command"][-1] and "--upstream=http://127.0.0.1:5000/" in ui[1]["args"]
    for name in ("mlyard-api", "mlflow-ui"):  # sessions of a working day, checked with the provider every hour
        args = pods[name]["containers"][1]["args"]
        assert "--cookie-expire=8h" in args and "--cookie-refresh=1h" in args, args
    assert {"name": "MLYARD_DOOR_TRUSTED_PROXY", "value": "true"} in ui[0]["env"]

    api.create("Namespace", "v1", None, {"metadata": {"name": "ml-platform"}})
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    refused = mlyard("k8s", "apply", "-f", str(path), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert refused.returncode == 2 and "mlyard-oidc" in refused.stderr, refused.stderr
    assert api.made("ml-platform") == SECRETS
    _secret(api, "ml-platform", "mlyard-oidc", tmp_path)
    applied = mlyard("k8s", "apply", "-f", str(path), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    made = {(r["kind"], r["name"]) for r in json.loads(applied.stdout)}
    assert {("Deployment", "mlflow-ui"), ("Service", "mlflow-ui"), ("NetworkPolicy", "mlflow-ui"),
            ("NetworkPolicy", "mlyard-sign-in")} <= made
    assert [c["name"] for c in api.get("Deployment", "ml-platform", "mlyard-api")["spec"]["template"]["spec"][
        "containers"]] == ["mlyard-api", "sign-in"]


def test_monitoring_applies_its_scrapes_rules_and_dashboard_with_a_scrape_credential_of_its_own(tmp_path, cluster):
    """`monitoring.enabled`: the component applied to the API server, whose schemas for the ServiceMonitors and
    the PrometheusRule are the Prometheus operator's own (its CRDs as its release's Go types generate them,
    tests/controlplane/build.sh); the scrape credential's Secret derived from the internal one; a second apply
    changes nothing."""
    import base64

    from controlplane import install_crd

    from mlyard.core.environment import metrics_token

    api, kubeconfig = cluster
    crds = ROOT / ".venv" / "controlplane" / "prometheus-operator"
    for kind in ("servicemonitors", "prometheusrules"):
        install_crd(api, yaml.safe_load((crds / f"monitoring.coreos.com_{kind}.yaml").read_text()))
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**VALUES, "monitoring": {"enabled": True, "prometheus_namespace": "observability",
                                                             "waiting_minutes": 20}}))
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    applied = mlyard("k8s", "apply", "-f", str(path), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    made = {(r["kind"], r["name"]): r["outcome"] for r in json.loads(applied.stdout)}
    assert {("ServiceMonitor", n) for n in ("gateway", "mlyard-api", "prefect-server", "mlflow")} | {
        ("PrometheusRule", "mlyard"), ("ConfigMap", "mlyard-dashboard"), ("Secret", "mlyard-metrics")} <= set(made)
    secret = api.get("Secret", "ml-platform", "mlyard-metrics")
    assert base64.b64decode(secret["data"]["token"]).decode() == metrics_token("x")  # ms's mlyard_internal_token
    assert set(secret["data"]) == {"token"}, "the internal credential itself is never in it"
    _, rule = api.request("GET", "/apis/monitoring.coreos.com/v1/namespaces/ml-platform/prometheusrules/mlyard")
    waiting = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "MlyardRunsWaitingTooLong")
    assert waiting["expr"] == 'max by (pool) (mlyard_runs_oldest_waiting_seconds{namespace="ml-platform"}) > 1200'
    policy = api.get("NetworkPolicy", "ml-platform", "mlyard-api-metrics")
    assert policy["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    again = mlyard("k8s", "apply", "-f", str(path), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {r["outcome"] for r in json.loads(again.stdout)} == {"unchanged"}


def test_a_changed_value_changes_only_what_it_touches(tmp_path, values_file, cluster):
    api, kubeconfig = cluster
    api.create("Namespace", "v1", None, {"metadata": {"name": "ml-platform"}})
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    assert mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path).returncode == 0
    values_file.write_text(yaml.safe_dump({**VALUES, "gateway_replicas": 5}))
    out = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    changed = [(r["kind"], r["name"]) for r in json.loads(out.stdout) if r["outcome"] != "unchanged"]
    assert changed == [("Deployment", "gateway")]
    assert api.get("Deployment", "ml-platform", "gateway")["spec"]["replicas"] == 5


@pytest.fixture
def clusters_prefect(tmp_path):
    """A Prefect server of its own, empty, standing for the one the install runs on the cluster (reached
    by the platform engineer through `kubectl port-forward`)."""
    import shutil

    from mlyard.core.settings import TELEMETRY_OFF_ENV, Settings
    from mlyard.prefect_setup import empty_prefect_db, start_server, wait_healthy
    from mlyard.tasks.processes import stop_group

    settings = Settings(home=tmp_path / "cluster-prefect", prefect_port=free_port())
    settings.prefect_home.mkdir(parents=True)
    shutil.copyfile(empty_prefect_db(), settings.prefect_home / "prefect.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLYARD_"))}
    log = tmp_path / "cluster-prefect.log"
    pid = start_server(settings, {**env, **TELEMETRY_OFF_ENV}, log)
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    try:
        wait_healthy(api_url, pid, log, 120)
        yield api_url
    finally:
        stop_group(pid, 10)


def test_apply_registers_the_pools_deployments_and_crash_automation_on_the_clusters_prefect(
        tmp_path, values_file, cluster, clusters_prefect):
    api, kubeconfig = cluster
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    values_file.write_text(yaml.safe_dump({**VALUES, "gpu": {**VALUES["gpu"], "types": ["NVIDIA-A100-SXM4-80GB",
                                                                                        "NVIDIA-L4"]}}))
    out = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--prefect-api-url",
                 clusters_prefect, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "registered on" in out.stdout
    from prefect.client.orchestration import SyncPrefectClient

    from mlyard.prefect_setup import CRASH_AUTOMATION, PREFECT_YAML

    with SyncPrefectClient(clusters_prefect) as client:
        pools = {p.name: p for p in client.read_work_pools()}
        assert set(pools) == {"gpu", "cpu"}, "no local pool on a cluster"
        assert (pools["gpu"].concurrency_limit, pools["cpu"].concurrency_limit) == (None, 30)  # the values'
        for pool in pools.values():
            assert pool.type == "kubernetes"
            props = pool.base_job_template["variables"]["properties"]
            assert props["namespace"]["default"] == "ml-platform"
            assert props["image"]["default"] == {"gpu": "registry.example/team/mlyard-training:1.2.3-cuda",
                                                 "cpu": "registry.example/team/mlyard:1.2.3"}[pool.name]
            assert props["service_account_name"]["default"] == "mlyard-run"  # may make no Jobs: user code runs there
            assert props["image_pull_secrets"]["default"] == [{"name": "regcred"}]
        deployments = client.read_deployments()
        automations = client.read_automations_by_name(CRASH_AUTOMATION)
    wanted = [d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"] if d["work_pool"]["name"] != "local"]
    assert len(deployments) == len(wanted) and {d.work_pool_name for d in deployments} == {"gpu", "cpu"}
    images = {d.work_pool_name: set() for d in deployments}
    for d in deployments:
        images[d.work_pool_name].add(d.job_variables["image"])
    assert images == {"gpu": {"registry.example/team/mlyard-training:1.2.3-cuda"},  # torch with CUDA
                      "cpu": {"registry.example/team/mlyard:1.2.3",  # the endpoint, notebook, pipeline flows
                              "mlyard-training:0.1.0-cpu"}}  # a member's `pool: local` runs: images.training_cpu
    assert pools["gpu"].base_job_template["variables"]["properties"]["data_storage_class"]["default"] == "fast-ssd"
    assert len(automations) == 1
    # the values' GPU nodes bound a run's job variables, as Prefect checks them against the pool's schema
    from prefect.exceptions import PrefectHTTPStatusError

    gpu = pools["gpu"].base_job_template["variables"]["properties"]
    assert gpu["gpu_count"]["maximum"] == 4 and gpu["gpu_type"]["anyOf"][0]["enum"] == ["NVIDIA-A100-SXM4-80GB",
                                                                                          "NVIDIA-L4"]
    train = next(d for d in deployments if d.name == "train-gpu")
    spec = {"spec": {"name": "bounded", "source_uri": "s3://b/src", "entry_point": "train.py"}}
    with SyncPrefectClient(clusters_prefect) as client:
        for wrong in ({"gpu_type": "NVIDIA-H100-80GB-HBM3"}, {"gpu_count": 5}):
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.create_flow_run_from_deployment(train.id, parameters=spec, job_variables=wrong)
            assert refused.value.response.status_code == 422, wrong
        run = client.create_flow_run_from_deployment(train.id, parameters=spec,
                                                     job_variables={"gpu_type": "NVIDIA-L4", "gpu_count": 4})
        client.delete_flow_run(run.id)


def test_apply_migrates_the_previous_releases_catalog_once_and_a_new_image_runs_the_job_again(tmp_path, values_file,
                                                                                               cluster):
    """An upgrade: the catalog as the previous release left it (one revision behind, with a template in it)
    is migrated by the Job, under its lock, before the new Deployments; the next release's Job finds
    nothing to do. A failed migration leaves the Deployments as they were."""
    from sqlalchemy import text

    from mlyard.registry.catalog import HEAD, Catalog

    api, kubeconfig = cluster
    previous = f"{int(HEAD) - 1:04d}"
    old = Catalog(_databases(tmp_path)["mlyard_catalog_url"], upgrade=False)
    old.upgrade(previous)
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO training_templates (name, description, spec, created_at) "
                          "VALUES ('kept', '', '{}', '2026-01-01')"))
    old.dispose()
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)

    def apply() -> subprocess.CompletedProcess:
        _to_pods(tmp_path / "databases")
        out = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    assert f"migrations: catalog: migrated from {previous} to {HEAD}" in apply().stdout
    catalog = Catalog(_databases(tmp_path)["mlyard_catalog_url"], upgrade=False)
    with catalog.engine.connect() as conn:
        assert catalog.revision() == HEAD
        assert conn.execute(text("SELECT name FROM training_templates")).scalars().all() == ["kept"]
    catalog.dispose()

    values_file.write_text(yaml.safe_dump({**VALUES, "image": "registry.example/team/mlyard:1.2.4"}))
    again = apply().stdout
    assert f"migrations: catalog: at {HEAD} already, nothing to do" in again, again
    # the migration Job and the platform image's release check run anew
    assert "2 replaced" in again and api.get("Job", "ml-platform", "mlyard-migrate")["spec"]["template"]["spec"][
        "containers"][0]["image"] == "registry.example/team/mlyard:1.2.4"

    api.delete(("Secret", "ml-platform", "ms"))  # the catalog's URL now names a database no one serves
    api.create("Secret", "v1", "ml-platform", {"metadata": {"name": "ms"}, "data": {
        k: __import__("base64").b64encode(("postgresql+psycopg://mlyard:x@127.0.0.1:9/catalog" if k == "mlyard_catalog_url"
                                           else "x").encode()).decode() for k in KEYS["ms"]}}, "kubectl-create")
    values_file.write_text(yaml.safe_dump({**VALUES, "image": "registry.example/team/mlyard:1.2.5"}))
    failed = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert failed.returncode != 0 and "the migration Job failed" in failed.stderr, failed.stdout + failed.stderr
    gateway = api.get("Deployment", "ml-platform", "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["image"] == "registry.example/team/mlyard:1.2.4", "the running release was left as it was"

    api.delete(("Secret", "ml-platform", "ms"))  # the fix; the same apply again runs the failed Job anew
    _secret(api, "ml-platform", "ms", tmp_path)
    fixed = apply().stdout
    assert f"migrations: catalog: at {HEAD} already" in fixed and "1 replaced" in fixed, fixed
    gateway = api.get("Deployment", "ml-platform", "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["image"] == "registry.example/team/mlyard:1.2.5"


def test_the_values_storage_class_goes_to_every_claim_the_install_makes():
    """Without a default StorageClass a claim that names none stays Pending (and its pod with it)."""
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.tasks.cluster import render

    objs = render(ClusterValues(overlay="dev", storage_class="fast-ssd"))
    postgres = next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "postgres")
    assert [c["spec"]["storageClassName"] for c in postgres["spec"]["volumeClaimTemplates"]] == ["fast-ssd"]
    plain = next(o for o in render(ClusterValues(overlay="dev")) if o["kind"] == "StatefulSet")
    assert "storageClassName" not in plain["spec"]["volumeClaimTemplates"][0]["spec"]


def test_each_account_of_the_install_does_what_its_pod_does_and_no_more(tmp_path, values_file, cluster,
                                                                         control_plane):
    """RBAC as the API server authorizes it, with the tokens it issues to the install's ServiceAccounts: the
    Prefect worker creates the very Job it renders for a flow run (prefect-kubernetes' own rendering of the
    pool's job template as the install registers it) and reads no Secret; a run's account (user code runs
    as it) reads no Secret and makes nothing; no account of the install may grant itself more. The Job's pod
    passes the namespace's restricted profile."""
    import ssl

    from job_templates import render

    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.prefect_cluster import cluster_pool_template
    from mlyard.prefect_setup import CPU_TEMPLATE, GPU_TEMPLATE

    api, kubeconfig = cluster
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    # the API server's endpoints as a cluster's API server writes them (this one advertises 127.0.0.1, and a
    # loopback address it writes nowhere): a public address, as a managed cluster's may be
    slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    made = api.request("POST", slices, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "kubernetes-test", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "endpoints": [{"addresses": ["35.190.1.20"]}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]})
    assert made[0] == 201, made
    try:
        applied = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    finally:
        api.request("DELETE", f"{slices}/kubernetes-test")
    assert applied.returncode == 0, applied.stderr
    # read from the cluster, kept from the pods that run a member's code (the flows read the ConfigMap's network)
    # and reached, on its ports, by the runs that apply objects alone
    said = next(line for line in applied.stdout.splitlines() if line.startswith("the cluster API: "))
    assert "10.96.0.1/32, 35.190.1.20/32 on ports 443, 6443" in said, said
    network = json.loads(api.get("ConfigMap", "ml-platform", "mlyard-config")["data"]["MLYARD_NETWORK"])
    assert network["api_server_cidrs"] == ["10.96.0.1/32", "35.190.1.20/32"] and network["api_server_ports"] == [443, 6443]
    runs = api.get("NetworkPolicy", "ml-platform", "runs")["spec"]["egress"]
    kept = {c for rule in runs for peer in rule.get("to", []) for c in peer.get("ipBlock", {}).get("except", [])}
    assert {"10.96.0.1/32", "35.190.1.20/32", "169.254.0.0/16"} <= kept, kept
    to_api = api.get("NetworkPolicy", "ml-platform", "runs-cluster-api")["spec"]
    assert to_api["podSelector"]["matchLabels"] == {"mlyard.io/cluster-api": "allowed"}
    assert [p["ipBlock"]["cidr"] for p in to_api["egress"][0]["to"]] == network["api_server_cidrs"]
    labels = api.get("Namespace", None, "ml-platform")["metadata"]["labels"]  # type: ignore[arg-type]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
    accounts = [n for k, n in api.made("ml-platform") if k == "ServiceAccount"]
    assert {"mlyard-run", "prefect-worker-gpu", "mlyard-endpoints"} <= set(accounts), accounts

    def as_account(account: str) -> ClusterApi:
        code, doc = api.request("POST", f"/api/v1/namespaces/ml-platform/serviceaccounts/{account}/token",
                                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
        assert code == 201, doc
        return ClusterApi(api.url, ssl.create_default_context(cafile=str(control_plane.ca)), doc["status"]["token"])

    values = ClusterValues(**VALUES)
    for pool, template in (("gpu", GPU_TEMPLATE), ("cpu", CPU_TEMPLATE)):
        job = render(cluster_pool_template(template, values, values.image), {})
        worker = as_account(f"prefect-worker-{pool}")
        code, doc = worker.request("POST", "/apis/batch/v1/namespaces/ml-platform/jobs?dryRun=All", job)
        assert code == 201, (pool, doc)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": job["spec"]["template"]["spec"]}
        code, doc = api.request("POST", "/api/v1/namespaces/ml-platform/pods?dryRun=All", pod)
        assert code == 201, (pool, "its pod under the restricted profile", doc)
        assert worker.request("GET", "/api/v1/namespaces/ml-platform/secrets/ms")[0] == 403
    run = as_account("mlyard-run")
    for method, path in (("GET", "/api/v1/namespaces/ml-platform/secrets/ms"), ("GET", "/api/v1/namespaces/ml-platform/secrets"),
                         ("GET", "/api/v1/namespaces/ml-platform/pods/check"),  # no rights at all
                         ("GET", "/api/v1/namespaces/ml-platform/configmaps"),
                         ("POST", "/apis/batch/v1/namespaces/ml-platform/jobs?dryRun=All"),
                         ("POST", "/api/v1/namespaces/ml-platform/pods?dryRun=All")):
        assert run.request(method, path, {"metadata": {"name": "x"}} if method == "POST" else None)[0] == 403, path
    scheduler = as_account("mlyard-scheduler")  # reads why a run waits (tasks/run_waits.py), no Secret
    assert scheduler.request("GET", "/api/v1/namespaces/ml-platform/pods")[0] == 200
    assert scheduler.request("GET", "/apis/batch/v1/namespaces/ml-platform/jobs/none")[0] == 404
    assert scheduler.request("GET", "/api/v1/namespaces/ml-platform/secrets")[0] == 403
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "more"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "mlyard-run", "namespace": "ml-platform"}]}
    for account in accounts:
        code, _ = as_account(account).request(
            "POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/ml-platform/rolebindings?dryRun=All", binding)
        assert code == 403, f"{account} may bind roles"


def test_the_ingress_example_is_valid_and_names_services_and_ports_the_install_has(tmp_path):
    """infra/k8s/examples/ingress-tls.yaml (TLS at the ingress; people reach the sign-in ports, scripts the API and
    the gateway): strictly valid, and every backend is a Service port of the install with sign-in."""
    example = yaml.safe_load((ROOT / "infra" / "k8s" / "examples" / "ingress-tls.yaml").read_text())
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(example, version, strict=True)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**VALUES, "sign_in": True}))
    out = mlyard("k8s", "render", "-f", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ports = {(o["metadata"]["name"], p["name"]) for o in yaml.safe_load_all(out.stdout) if o and o["kind"] == "Service"
             for p in o["spec"]["ports"]}
    backends = {(p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
                for rule in example["spec"]["rules"] for p in rule["http"]["paths"]}
    assert backends <= ports, backends - ports
    assert {h for t in example["spec"]["tls"] for h in t["hosts"]} == {r["host"] for r in example["spec"]["rules"]}


def test_diff_says_what_an_apply_would_change_and_changes_nothing(tmp_path, values_file, cluster):
    """`mlyard k8s diff`: after an apply, the same values change nothing; another gateway count changes that
    Deployment's replicas alone, and the diff itself stores nothing (every object's version as it was)."""
    api, kubeconfig = cluster
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    assert mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path).returncode == 0
    rv = api.versions("ml-platform")
    same = mlyard("k8s", "diff", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert {r["outcome"] for r in json.loads(same.stdout)} == {"unchanged"}, same.stdout
    values_file.write_text(yaml.safe_dump({**VALUES, "gateway_replicas": 5}))
    other = mlyard("k8s", "diff", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    changed = [r for r in json.loads(other.stdout) if r["outcome"] != "unchanged"]
    assert changed == [{"kind": "Deployment", "name": "gateway", "outcome": "changed", "fields": ["spec.replicas"]}]
    said = mlyard("k8s", "diff", "-f", str(values_file), "--kubeconfig", str(kubeconfig), cwd=tmp_path)
    assert "spec.replicas" in said.stdout and "1 changed" in said.stdout, said.stdout
    assert api.versions("ml-platform") == rv, "a diff stored nothing"
    assert api.get("Deployment", "ml-platform", "gateway")["spec"]["replicas"] == 4


def test_apply_keeps_a_scaled_count_prunes_what_the_values_dropped_and_uninstall_removes_the_install(tmp_path,
                                                                                                    cluster):
    """Day two: a count `kubectl scale` set stays through an apply (said, not reverted); turning monitoring off
    leaves its objects until `--prune`, which deletes exactly those; `mlyard k8s uninstall` asks first, then
    deletes everything the applies made and leaves the namespace and its Secrets."""
    import time

    from controlplane import install_crd

    api, kubeconfig = cluster
    crds = ROOT / ".venv" / "controlplane" / "prometheus-operator"
    for kind in ("servicemonitors", "prometheusrules"):
        install_crd(api, yaml.safe_load((crds / f"monitoring.coreos.com_{kind}.yaml").read_text()))
    watched, plain = tmp_path / "watched.yaml", tmp_path / "plain.yaml"
    watched.write_text(yaml.safe_dump({**VALUES, "monitoring": {"enabled": True}}))
    plain.write_text(yaml.safe_dump(VALUES))
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)

    def k8s(*args: str) -> subprocess.CompletedProcess:
        return mlyard("k8s", *args, "--kubeconfig", str(kubeconfig), cwd=tmp_path)

    def there(kind: str, name: str) -> bool:
        plural = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}.get(kind)
        if plural is None:
            return api.get_object(kind, "ml-platform", name) is not None
        return api.request("GET", f"/apis/monitoring.coreos.com/v1/namespaces/ml-platform/{plural}/{name}")[0] == 200

    assert k8s("apply", "-f", str(watched)).returncode == 0
    code, _ = api.request("PATCH", "/apis/apps/v1/namespaces/ml-platform/deployments/gateway/scale?fieldManager="
                          "kubectl-scale", {"spec": {"replicas": 6}}, "application/merge-patch+json")
    assert code == 200
    monitoring = {("ServiceMonitor", n) for n in ("gateway", "mlyard-api", "prefect-server", "mlflow")} | {
        ("PrometheusRule", "mlyard"), ("ConfigMap", "mlyard-dashboard"), ("Secret", "mlyard-metrics")}

    kept = k8s("apply", "-f", str(plain))
    assert kept.returncode == 0, kept.stderr
    assert "Deployment gateway: kept spec.replicas=6 (set by kubectl-scale; the values say 4" in kept.stdout
    assert "no longer in the values' install" in kept.stdout and "ServiceMonitor gateway" in kept.stdout
    assert api.get("Deployment", "ml-platform", "gateway")["spec"]["replicas"] == 6
    assert there("ServiceMonitor", "gateway"), "kept until --prune"
    same = k8s("diff", "-f", str(plain), "--json")
    assert all(r["outcome"] == "unchanged" for r in json.loads(same.stdout) if r["name"] == "gateway"), same.stdout

    pruned = k8s("apply", "-f", str(plain), "--prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    rows = json.loads(pruned.stdout)
    assert {(r["kind"], r["name"]) for r in rows if r["outcome"] == "pruned"} >= monitoring
    assert {r["outcome"] for r in rows} <= {"unchanged", "pruned"}, rows
    assert not any(there(k, n) for k, n in monitoring)
    again = k8s("apply", "-f", str(plain), "--json")
    assert {r["outcome"] for r in json.loads(again.stdout)} == {"unchanged"}

    rv = api.versions("ml-platform")
    unasked = k8s("uninstall", "-f", str(plain))
    assert unasked.returncode == 2 and len(unasked.stderr.strip().splitlines()) == 1, unasked.stderr
    assert "--yes" in unasked.stderr and api.versions("ml-platform") == rv
    stage = {"metadata": {"name": "iris-prod"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"s": "iris"}},
             "template": {"metadata": {"labels": {"s": "iris"}}, "spec": {"containers": [{"name": "m", "image": "x"}]}}}}
    api.create("Deployment", "apps/v1", "ml-platform", stage, "mlyard-endpoints")  # as an endpoint's flow makes it
    gone = k8s("uninstall", "-f", str(plain), "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "kept in namespace ml-platform: 4 Secrets, 1 Deployment" in gone.stdout, gone.stdout
    assert "Deployment gateway" not in gone.stdout.split("kept in")[1]
    deadline = time.monotonic() + 60
    left = SECRETS + [("Deployment", "iris-prod")]
    while sorted(api.made("ml-platform")) != sorted(left) and time.monotonic() < deadline:  # what they own goes after
        time.sleep(1)
    assert sorted(api.made("ml-platform")) == sorted(left), "the Secrets and the flows' objects stay, nothing else"
    assert api.get_object("Namespace", None, "ml-platform") is not None  # type: ignore[arg-type]
    assert k8s("uninstall", "-f", str(plain), "--yes").returncode == 2, "nothing left to remove"


def test_apply_waits_for_the_rollouts_says_what_changed_and_names_a_rollout_that_cannot_finish(tmp_path, values_file,
                                                                                             cluster):
    """The apply waits for the Deployments it made or changed to roll out (the Deployment and ReplicaSet
    controllers' own status: every replica updated and available), and says so per Deployment; an upgrade to an
    image the node cannot pull is applied, says which fields changed, and ends in one line naming the rollouts
    that did not finish and what their pods wait for, the old replicas still serving."""
    api, kubeconfig = cluster
    for name in ("pf", "mf", "ms", "regcred"):
        _secret(api, "ml-platform", name, tmp_path)
    first = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    rows = {r["name"]: r for r in json.loads(first.stdout) if r["kind"] == "Deployment"}
    assert rows["gateway"]["rolled_out"].startswith("4/4 in ") and all("rolled_out" in r for r in rows.values())
    status = api.get("Deployment", "ml-platform", "gateway")["status"]
    assert status["availableReplicas"] == status["updatedReplicas"] == 4

    values_file.write_text(yaml.safe_dump({**VALUES, "image": UNPULLED}))
    upgrade = mlyard("k8s", "apply", "-f", str(values_file), "--kubeconfig", str(kubeconfig), "--wait-seconds", "20",
                     cwd=tmp_path)
    assert upgrade.returncode == 2, upgrade.stdout + upgrade.stderr
    assert "Traceback" not in upgrade.stderr and len(upgrade.stderr.strip().splitlines()) == 1, upgrade.stderr
    assert "not rolled out within 20 s" in upgrade.stderr and "Deployment gateway (" in upgrade.stderr
    assert "its pods: Pending" in upgrade.stderr, upgrade.stderr
    assert "spec.template.spec.containers" in upgrade.stdout  # what changed, per object
    status = api.get("Deployment", "ml-platform", "gateway")["status"]
    assert status["availableReplicas"] >= 3, status  # the old replicas serve on (maxUnavailable 25 %)
