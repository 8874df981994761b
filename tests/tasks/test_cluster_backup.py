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
