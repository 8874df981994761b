"""A training queued on the gpu pool from a user's shell with its source and dataset as paths on that
machine (mlyard/uploads.py): refused in one line without an upload prefix; with MLYARD_UPLOAD_URI the
inputs are uploaded to the platform's storage (moto's S3 server here), the run's spec names the upload,
and the pod (on Kubernetes' own control plane, with the platform's S3 settings as its ConfigMap gives them) trains
from it; the same inputs are not sent twice; a local output is refused."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml
from kube_cluster import final

from tests.test_user_paths import _one_line_error, project

BIN = Path(sys.executable).parent
SCRIPT = """import os
rows = open(os.path.join(os.environ["EM_DATASET_TRAIN"], "train.csv")).read().split()
print(f"rows={len(rows)} first={rows[0]}", flush=True)
print("accuracy=0.9", flush=True)
"""


def _submit(work: Path, spec: dict, extra_env: dict[str, str]):
    import subprocess

    (work / "train.yaml").write_text(yaml.safe_dump(spec))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", **extra_env}
    return subprocess.run([str(BIN / "mlyard"), "train", "-f", "train.yaml", "--submit", "--pool", "gpu", "--json"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=180)


def test_local_inputs_are_uploaded_for_the_clusters_pods_or_refused(real_cluster, s3_server, bucket, tmp_path):
    import boto3
    from prefect import get_client

    api = real_cluster.api
    assert real_cluster.stores.s3_endpoint == s3_server
    work = project("uploads")
    (work / "algo").mkdir()
    (work / "algo" / "main.py").write_text(SCRIPT)
    (work / "data").mkdir()
    (work / "data" / "train.csv").write_text("7\n8\n9\n")
    spec = {"name": "uploaded", "experiment": "kube", "source_uri": "algo", "entry_point": "main.py",
            "datasets": {"train": "data/train.csv"}}
    s3 = {"MLYARD_S3_ENDPOINT_URL": s3_server, "MLYARD_S3_ACCESS_KEY_ID": "test", "MLYARD_S3_SECRET_ACCESS_KEY": "test"}

    refused = _one_line_error(_submit(work, spec, s3), "source_uri", str(work / "algo"), "MLYARD_UPLOAD_URI")
    assert "cannot read" in refused
    upload = {**s3, "MLYARD_UPLOAD_URI": f"s3://{bucket}/uploads"}
    _one_line_error(_submit(work, {**spec, "output_uri": "out"}, upload), "output_uri", "cannot write")
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    assert "Contents" not in client.list_objects_v2(Bucket=bucket), "nothing is sent for a refused spec"

    # the pods read the platform's storage (this S3 server) with the keys the mlyard-settings Secret gives them
    first = _submit(work, spec, upload)
    assert first.returncode == 0, first.stderr
    assert "source_uri: uploading" in first.stderr and "datasets.train: uploading" in first.stderr, first.stderr
    run_id = json.loads(first.stdout)["id"]
    with get_client(sync_client=True) as prefect:
        sent = prefect.read_flow_run(run_id).parameters["spec"]
    assert sent["source_uri"].startswith(f"s3://{bucket}/uploads/") and sent["source_uri"].endswith("/algo")
    assert sent["datasets"]["train"].endswith("/train.csv") and "://" in sent["datasets"]["train"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert any(k.endswith("/algo/main.py") for k in keys) and any(k.endswith("/train.csv") for k in keys), keys

    fr = final(run_id)
    assert fr.state.is_completed(), (fr.state, {k[1]: v[-800:] for k, v in api.pod_logs.items()})
    assert any("rows=3 first=7" in log for log in api.pod_logs.values()), "the pod trained on the upload"

    again = _submit(work, {**spec, "name": "uploaded-again"}, upload)  # the same content: not sent again
    assert again.returncode == 0, again.stderr
    assert "uploading" not in again.stderr and again.stderr.count("already") == 2, again.stderr
    assert {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]} == keys
    with get_client(sync_client=True) as prefect:  # leave nothing queued for the next test's worker
        from prefect.states import Cancelled

        prefect.set_flow_run_state(json.loads(again.stdout)["id"], Cancelled(), force=True)
