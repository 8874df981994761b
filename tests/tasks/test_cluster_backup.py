"""The backup and restore Jobs of a cluster (tasks/cluster_backup.py), without a cluster: the migration Job's pod
for the values, restricted, with the backup's account and what it reads; a prefix it cannot write to refused in
one line naming it. The drill itself runs on Kubernetes' own control plane: tests/infra/test_cluster_backup.py."""

from __future__ import annotations

import pytest
from pod_security import violations

from mlyard.core.errors import SpecError
from mlyard.core.specs.cluster import ClusterValues
from mlyard.tasks import cluster, cluster_backup
from mlyard.tasks.kubernetes import validate


def test_the_backup_job_is_the_migration_jobs_pod_with_the_backups_account_and_the_settings():
    values = ClusterValues(overlay="prod", namespace="ml", secrets={"settings": "ml-settings", "mlflow": "ml-mlflow"},
                           image_pull_secrets=["regcred"])
    migrate = next(o for o in cluster.render(values) if o["kind"] == "Job" and o["metadata"]["name"] == "mlyard-migrate")
    job = cluster_backup.job(values, migrate, "backup", "s3://backups/mlyard/one")
    validate([job])
    pod = job["spec"]["template"]["spec"]
    assert violations(pod, "restricted") == []
    assert pod["serviceAccountName"] == "mlyard-backup" and pod["automountServiceAccountToken"] is True
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and job["spec"]["backoffLimit"] == 0
    box = pod["containers"][0]
    assert box["command"] == ["python", "-m", "mlyard.tasks.cluster_backup", "backup", "s3://backups/mlyard/one"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in box["env"] if "valueFrom" in e}
    assert refs["MLYARD_BACKUP_ARTIFACTS"] == {"name": "ml-mlflow", "key": "artifacts-destination", "optional": True}
    assert all(r["optional"] for r in refs.values()), "a store the install lacks is named and skipped, not a stuck pod"
    assert next(v for v in pod["volumes"] if v["name"] == "settings")["secret"]["secretName"] == "ml-settings"
    assert job["metadata"]["namespace"] == "ml" and job["metadata"]["name"].startswith("mlyard-backup-backup-")


def test_a_prefix_that_is_not_object_storage_or_lies_within_what_it_copies_is_refused(tmp_path):
    from mlyard.core.settings import Settings
    from mlyard.tasks.storage import Storage

    storage = Storage(Settings(home=tmp_path))
    with pytest.raises(SpecError, match=r"uri: .* an s3:// \(or obs://\) prefix"):
        cluster_backup._check(storage, str(tmp_path / "backups"), {})
    with pytest.raises(SpecError, match=r"outside the projects storage it copies"):
        cluster_backup._check(storage, "s3://ml/projects/backups", {"projects": "s3://ml/projects"})
    cluster_backup._check(storage, "s3://ml/backups/one", {"projects": "s3://ml/projects", "uploads": None})


def test_a_restore_no_one_can_confirm_is_refused_in_one_line_before_anything_is_asked(tmp_path):
    """`mlyard k8s restore` from a script (no terminal) without --yes: refused in one line, exit 2, and no cluster
    asked anything (here there is none: a kubeconfig that names nothing would fail otherwise)."""
    import subprocess
    import sys
    from pathlib import Path

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    done = subprocess.run([str(Path(sys.executable).parent / "mlyard"), "k8s", "restore", "--from", "s3://b/backups/one",
                           "--kubeconfig", str(kubeconfig)], cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"})
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--yes" in lines[0] and "nothing was changed" in lines[0], done.stderr


def test_a_backup_on_another_object_store_than_the_prefixes_it_copies_streams_them_there_and_back(s3_settings, tmp_path):
    """The platform's prefixes on one object store (s3://), the backup's prefix on another (obs://HOST, its own
    moto server in its own process, so no state is shared): each object goes through the Job's pod, both ways."""
    import subprocess
    import sys
    import time
    import uuid
    from pathlib import Path

    import boto3
    from controlplane import free_port

    from mlyard.tasks.storage import Storage

    port = free_port()
    other = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
        far = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **keys)
        near = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, **keys)
        for _ in range(100):
            try:
                far.create_bucket(Bucket="archive")
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        bucket = f"platform-{uuid.uuid4().hex[:8]}"  # the S3 server is the session's
        near.create_bucket(Bucket=bucket)
        for name, body in (("a.txt", b"one"), ("deep/b.bin", b"\0" * 70000)):
            near.put_object(Bucket=bucket, Key=f"projects/{name}", Body=body)
        storage = Storage(s3_settings)
        backup = f"obs://127.0.0.1:{port}/archive/backups/one/storage/projects"
        assert cluster_backup._copy(storage, f"s3://{bucket}/projects", backup) == 2
        assert far.get_object(Bucket="archive", Key="backups/one/storage/projects/deep/b.bin")["Body"].read() == b"\0" * 70000
        assert near.list_objects_v2(Bucket=bucket, Prefix="backups/").get("KeyCount") == 0
        assert cluster_backup._copy(storage, backup, f"s3://{bucket}/restored") == 2  # and back, as a restore copies
        assert near.get_object(Bucket=bucket, Key="restored/a.txt")["Body"].read() == b"one"
    finally:
        other.terminate()
        other.wait(10)
