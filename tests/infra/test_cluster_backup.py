"""The restore drill of a cluster (issue 70 §3), on Kubernetes' own control plane (`platform_nodes`: a node runs the
Job's pod as its image's user): a populated install backed up by `mlyard k8s backup` (a fresh process, as an admin
runs it), wiped, and restored by `mlyard k8s restore`. Its stores are real: the catalog, MLflow's tracking store
(MLflow's own schema, written by MLflow's client) and RAGs' vectors (pgvector) are databases of a real PostgreSQL,
its storage the cluster's S3; the Secrets and the volume claim are the API server's. Prefect's database is the test
stack's and not the install's, so the backup names it as not set."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from kube_cluster import NS

BUCKET = "mlyard-cluster"
PREFIXES = {"projects": f"s3://{BUCKET}/drill/projects", "uploads": f"s3://{BUCKET}/drill/uploads",
            "artifacts": f"s3://{BUCKET}/drill/artifacts"}


@pytest.fixture
def platform_as_made(cluster_stores) -> dict:
    """The drill's own catalog (migrated, as the install's migration Job leaves it): wiped and restored here."""
    from mlyard.registry import Catalog

    url = cluster_stores.database("drill_catalog")
    Catalog(url, upgrade=True).dispose()
    return {"catalog_url": url}


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _populate(catalog_url: str, mlflow_url: str, vectors_url: str, s3) -> dict:
    """A project (beside `default`) with a member and their key, a private endpoint and its token, a schedule; a run and a model
    version in MLflow with an artifact; a RAG's vectors; the projects' and uploads' files."""
    from mlflow import MlflowClient

    from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints
    from mlyard.registry.schedules import Schedules
    from mlyard.registry.teams import Teams

    catalog = Catalog(catalog_url)
    try:
        teams = Teams(catalog)
        teams.create_project("vision", "the drill's")
        _, key = teams.create_user("ana")
        teams.set_member("vision", "ana", "editor")
        endpoints = Endpoints(catalog)
        endpoints.create(EndpointSpec(name="digits", stage=StageSpec(instance_type="m2.c4m8", resources=[
            StageResourceSpec(model="digits/1")])), [("digits", "1")], project="vision")
        token = endpoints.issue_token("digits", datetime.now(timezone.utc) + timedelta(days=30))["token"]
        watermark = int(datetime.now(timezone.utc).timestamp()) - 3600
        Schedules(catalog).create("nightly", {"name": "nightly", "cron": "0 2 * * *"}, None, "ACTIVE", watermark,
                                  project="vision")
    finally:
        catalog.dispose()
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)  # MLflow makes its schema
    experiment = client.create_experiment("drill", artifact_location=f"{PREFIXES['artifacts']}/drill")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "accuracy", 0.97)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("digits")
    client.create_model_version("digits", f"{PREFIXES['artifacts']}/drill/{run.info.run_id}/artifacts/model",
                                run_id=run.info.run_id)
    s3.put_object(Bucket=BUCKET, Key=f"drill/artifacts/drill/{run.info.run_id}/artifacts/model/model.pkl", Body=b"m")
    s3.put_object(Bucket=BUCKET, Key="drill/projects/vision/data/train.csv", Body=b"x,y\n1,2\n")
    s3.put_object(Bucket=BUCKET, Key="drill/uploads/ana/src/train.py", Body=b"print('hi')\n")
    with psycopg.connect(_libpq(vectors_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE chunks (id int PRIMARY KEY, doc text, embedding vector(3))")
        conn.execute("INSERT INTO chunks VALUES (1, 'tokens.md', '[1,0,0]'), (2, 'gpus.md', '[0,1,0]')")
    return {"key": key, "token": token, "run_id": run.info.run_id, "watermark": watermark}


def _cli(args: list[str], kubeconfig: Path, home: Path) -> dict:
    """`mlyard k8s ...` in a fresh process, as an admin runs it on a workstation: their kubeconfig, nothing else."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": str(kubeconfig),
           "LANG": "C.UTF-8"}
    done = subprocess.run([str(Path(sys.executable).parent / "mlyard"), "k8s", *args, "--json"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def _wipe(api, catalog_url: str, mlflow_url: str, vectors_url: str, s3) -> None:
    """The disaster: every table the platform's user made, every object of the prefixes, mlyard's Secrets (one
    deleted, one still there but changed since: a restore replaces it)."""
    for url in (catalog_url, mlflow_url, vectors_url):
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute("DROP OWNED BY mlyard CASCADE")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="drill/"):
        for obj in page.get("Contents", []):
            if not obj["Key"].startswith("drill/backup/"):
                s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    assert api.request("DELETE", f"/api/v1/namespaces/{NS}/secrets/registry-harbor")[0] == 200
    changed = api.request("PATCH", f"/api/v1/namespaces/{NS}/secrets/notebook-3-token", {
        "metadata": {"labels": None}, "data": {"token": base64.b64encode(b"written-later").decode()}},
        "application/merge-patch+json")
    assert changed[0] == 200, changed


def test_a_cluster_backed_up_wiped_and_restored_has_every_key_token_run_version_schedule_and_secret(
        platform_nodes, platform_as_made, cluster_stores, tmp_path):
    import boto3
    from mlflow import MlflowClient

    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints
    from mlyard.registry.schedules import Schedules
    from mlyard.registry.teams import Teams

    api = platform_nodes.api
    catalog_url = platform_as_made["catalog_url"]
    mlflow_url, vectors_url = cluster_stores.database("drill_mlflow"), cluster_stores.database("drill_vectors", True)
    s3 = boto3.client("s3", endpoint_url=cluster_stores.s3_endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    b64 = lambda v: base64.b64encode(v.encode()).decode()  # noqa: E731
    # the install's Secrets and ConfigMap as the values and infra/README.md have them
    assert api.request("PATCH", f"/api/v1/namespaces/{NS}/secrets/mlyard-settings", {"data": {
        "mlyard_vector_store_url": b64(_libpq(vectors_url))}}, "application/merge-patch+json")[0] == 200
    api.create("Secret", "v1", NS, {"metadata": {"name": "mlyard-mlflow"}, "data": {
        "backend-store-uri": b64(mlflow_url), "artifacts-destination": b64(PREFIXES["artifacts"])}})
    assert api.request("PATCH", f"/api/v1/namespaces/{NS}/configmaps/mlyard-config", {"data": {
        "MLYARD_PROJECTS_URI": PREFIXES["projects"], "MLYARD_UPLOAD_URI": PREFIXES["uploads"]}},
        "application/merge-patch+json")[0] == 200
    platform_nodes.apply("mlyard-backup")
    # what mlyard made in the namespace: a registry account's Secret, a notebook's token, its data's claim
    owned = {"app.kubernetes.io/managed-by": "mlyard"}
    api.create("Secret", "v1", NS, {"metadata": {"name": "registry-harbor", "labels": owned},
                                    "type": "kubernetes.io/dockerconfigjson",
                                    "data": {".dockerconfigjson": b64('{"auths": {"harbor.example": {}}}')}})
    api.create("Secret", "v1", NS, {"metadata": {"name": "notebook-3-token", "labels": owned},
                                    "data": {"token": b64("nb-secret")}})
    api.create("PersistentVolumeClaim", "v1", NS, {"metadata": {"name": "data-notebook-3-0", "labels": owned},
                                                   "spec": {"accessModes": ["ReadWriteOnce"],
                                                            "resources": {"requests": {"storage": "20Gi"}}}})
    made = _populate(catalog_url, mlflow_url, vectors_url, s3)
    kubeconfig = tmp_path / "kubeconfig"  # platform_nodes' own, the cluster's admin
    values = tmp_path / "values.yaml"
    values.write_text(f"namespace: {NS}\n")
    uri = f"s3://{BUCKET}/drill/backup/first"

    taken = _cli(["backup", "--to", uri, "-f", str(values)], kubeconfig, tmp_path)
    assert set(taken["databases"]) == {"catalog", "mlflow", "vectors"} and taken["skipped"]["prefect"] == "not set"
    assert {n: s["objects"] for n, s in taken["storage"].items()} == {"projects": 1, "uploads": 1, "artifacts": 1}
    assert taken["secrets"] == ["notebook-3-token", "registry-harbor"] and "mlyard-settings" in taken["install_secrets"]
    assert [v["name"] for v in taken["volumes"]] == ["data-notebook-3-0"] and taken["volumes"][0]["size"] == "20Gi"
    before = taken["inventory"]
    assert before["catalog"]["projects"] == 2 and before["catalog"]["endpoint_tokens"] == 1 and \
        before["catalog"]["schedules"] == 1 and before["mlflow"]["runs"] == 1 and before["mlflow"]["model_versions"] == 1
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="drill/backup/first/")["Contents"]
    assert {o["Key"].removeprefix("drill/backup/first/") for o in listed} >= {
        "manifest.json", "secrets.json", "volumes.json", "databases/catalog.dump", "databases/mlflow.dump",
        "databases/vectors.dump", "storage/projects/vision/data/train.csv"}

    _wipe(api, catalog_url, mlflow_url, vectors_url, s3)
    with psycopg.connect(_libpq(catalog_url)) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)

    restored = _cli(["restore", "--from", uri, "-f", str(values), "--yes"], kubeconfig, tmp_path)
    assert restored["restored_inventory"] == before, (restored["restored_inventory"], before)
    print(f"drill: backup Job's work {taken['seconds']} s; inventory before and after the restore: {json.dumps(before)}")
    assert sorted(restored["restored_secrets"]) == ["notebook-3-token", "registry-harbor"]
    catalog = Catalog(catalog_url)
    try:
        actor = Teams(catalog).authenticate(made["key"])
        assert actor.name == "ana" and actor.roles.get("vision") == "editor", actor
        assert Endpoints(catalog).check_token("digits", f"Bearer {made['token']}") is None, "the old token answers"
        assert Endpoints(catalog).check_token("digits", "Bearer mlyt-not-it") is not None
        assert Schedules(catalog).get("nightly").watermark_epoch == made["watermark"], "it catches up from there"
    finally:
        catalog.dispose()
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    assert client.get_run(made["run_id"]).data.metrics == {"accuracy": 0.97}
    assert client.get_model_version("digits", "1").run_id == made["run_id"]
    assert s3.get_object(Bucket=BUCKET, Key="drill/projects/vision/data/train.csv")["Body"].read() == b"x,y\n1,2\n"
    assert s3.get_object(Bucket=BUCKET, Key="drill/uploads/ana/src/train.py")["Body"].read() == b"print('hi')\n"
    with psycopg.connect(_libpq(vectors_url)) as conn:
        assert conn.execute("SELECT doc FROM chunks ORDER BY embedding <-> '[0,1,0]' LIMIT 1").fetchone() == ("gpus.md",)
    secret = api.get("Secret", NS, "notebook-3-token")
    assert base64.b64decode(secret["data"]["token"]) == b"nb-secret" and secret["metadata"]["labels"] == owned
