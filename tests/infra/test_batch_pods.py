"""A batch inference's workers as pods of the gpu pool (issue 26 §2): an instance's resources split among
its pods (the seed's appendix 9), the pods spread evenly over nodes, and a real run of 2 worker pods
through the Prefect Kubernetes worker on Kubernetes' own control plane (tests/controlplane.py; the node's
kubelet, tests/kubelet_node.py, runs each pod's command here as the pod's user), reading and writing the
cluster's storage."""

from __future__ import annotations

import json

import pytest
from job_templates import render, strictly_valid
from kube_cluster import NS, finished_job

from mlyard.core.errors import SpecError
from mlyard.core.specs import BatchInferenceSpec, load_spec
from mlyard.prefect_setup import GPU_TEMPLATE

BASE = {"name": "pods", "model": "m@champion", "input_uri": "/in", "input_format": "jsonl", "output_uri": "/out"}


def test_an_instance_is_shared_by_its_pods_which_spread_over_nodes():
    spec = load_spec(BatchInferenceSpec, {**BASE, "workers": 4, "instances": 2, "resources": {
        "gpu_count": 2, "gpu_type": "Tesla-T4", "cpu": 8, "memory": "32Gi", "data_storage": "100Gi"}})
    jv = spec.worker_job_variables("7c1d")
    assert (jv["gpu_count"], jv["cpu_limit"], jv["memory_limit"], jv["data_storage_size"]) == (
        1, "4000m", "16384Mi", "51200Mi"), "each of an instance's 2 pods gets half of it"
    job = strictly_valid(render(json.loads(GPU_TEMPLATE.read_text()), jv))
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["mlyard.io/batch"] == "7c1d"
    assert pod["spec"]["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"mlyard.io/batch": "7c1d"}}}]
    code_host = pod["spec"]["initContainers"][0]  # the model runs there, with the pod's GPU
    assert code_host["name"] == "code-host" and code_host["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}
    odd = load_spec(BatchInferenceSpec, {**BASE, "workers": 2, "resources": {"gpu_count": 3}})
    assert odd.worker_job_variables("x")["gpu_count"] == 1, "3 GPUs for 2 pods: one stays unused, as the seed warns"


@pytest.mark.parametrize(("change", "words"), [
    ({"workers": 1, "instances": 2}, ["instances (2)", "workers (1)"]),
    ({"workers": 4, "resources": {"gpu_count": 2}}, ["resources.gpu_count (2)", "4 worker pods per instance"]),
])
def test_impossible_splits_are_refused_before_anything_runs(change, words):
    with pytest.raises(SpecError) as refused:
        load_spec(BatchInferenceSpec, {**BASE, **change})
    for word in words:
        assert word in str(refused.value)


def test_two_worker_pods_share_the_rows_and_finish_the_batch(real_cluster, models, tmp_path):
    import uuid

    import boto3
    from kubernetes.utils import parse_quantity

    from mlyard.core.settings import Settings
    from mlyard.flows.batch_inference import batch_infer
    from mlyard.uploads import for_cluster

    api, _ = real_cluster
    rows = [{"id": f"r{i}", "features": x.tolist()} for i, x in enumerate(models["X"][:80])]
    for n in range(2):
        path = tmp_path / "in" / f"part-{n}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[n * 40:(n + 1) * 40]))
    out = f"s3://mlyard-cluster/out/{uuid.uuid4().hex}"
    spec = BatchInferenceSpec(name="on-pods", model=str(models["classifier"]), input_uri=str(tmp_path / "in"),
                              input_format="jsonl", output_uri=out, id_field="id", workers=2,
                              worker_deployment="batch-inference-worker/batch-inference-worker-gpu",
                              resources={"cpu": 2, "memory": "4Gi"})
    result = batch_infer(for_cluster(spec, Settings()))  # the model and the input uploaded for the pods
    assert (result.rows, result.failed_rows) == (80, 0)
    jobs = [j for j in api.items("Job", NS)
            if j["spec"]["template"]["metadata"]["labels"].get("mlyard.io/batch") == result.batch_id]
    assert len(jobs) == 2, "one pod per worker"
    for job in jobs:
        job = finished_job(api, job["metadata"]["name"])  # the run reports its end a moment before its pod's
        assert job["status"]["succeeded"] == 1
        limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        # as the API server keeps them (1000m is 1, 2048Mi is 2Gi): one instance, two pods, half each
        assert (parse_quantity(limits["cpu"]), parse_quantity(limits["memory"])) == (1, 2 * 1024**3)
        assert job["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    s3 = boto3.client("s3", endpoint_url=real_cluster.stores.s3_endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    prefix = out.removeprefix("s3://mlyard-cluster/")
    parts = [o["Key"] for o in s3.list_objects_v2(Bucket="mlyard-cluster", Prefix=prefix)["Contents"]
             if o["Key"].endswith(".predictions.jsonl")]
    lines = [line for key in parts
             for line in s3.get_object(Bucket="mlyard-cluster", Key=key)["Body"].read().decode().splitlines()]
    assert len(lines) == 80 and {json.loads(line)["id"] for line in lines} == {r["id"] for r in rows}
