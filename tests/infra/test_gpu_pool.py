"""The gpu pool's base job template renders a valid Kubernetes Job for a flow run.

No cluster runs here: prefect-kubernetes renders the manifest exactly as its worker would, and
kubernetes-validate checks it against the Kubernetes 1.30 schema offline.
"""

import json
import uuid

import kubernetes_validate
import pytest
import yaml

from mlyard.prefect_setup import GPU_TEMPLATE, PREFECT_YAML


@pytest.fixture(scope="module")
def template():
    return json.loads(GPU_TEMPLATE.read_text())


def _render(template, values):
    import asyncio

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    cfg = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    cfg.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4()))
    return cfg.job_manifest


def test_gpu_job_manifest_is_valid_and_asks_for_gpus(template, stack):
    from core.specs import TrainingSpec

    spec = TrainingSpec(name="big", source_uri="s3://b/algo", entry_point="train.py", image="registry.local/mlyard:gpu",
                        resources={"gpu_count": 2, "gpu_type": "NVIDIA-A100-SXM4-80GB", "cpu": 8, "memory": "64Gi"})
    values = {**spec.job_variables(), "image_pull_secrets": [{"name": "regcred"}], "service_account_name": "mlyard"}
    manifest = _render(template, values)
    # Unknown fields are dropped by the API server; the schema check must pass.
    kubernetes_validate.validate(manifest, "1.30", strict=False)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["limits"]["memory"] == "64Gi" and container["resources"]["requests"]["cpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "mlyard"
    assert container["image"] == "registry.local/mlyard:gpu"


def test_template_exposes_the_job_variables(template):
    props = template["variables"]["properties"]
    for name in ("gpu_count", "gpu_type", "tolerations", "cpu_request", "memory_limit", "image",
                 "image_pull_secrets", "service_account_name"):
        assert name in props and props[name].get("description"), name


@pytest.mark.parametrize("entrypoint", ["flows.training.train", "flows.tuning.tune", "flows.batch_inference.batch_infer",
                                        "flows.batch_worker.batch_worker", "flows.evaluation.evaluate"])
def test_prefect_yaml_declares_every_flow_on_both_pools(entrypoint):
    conf = yaml.safe_load(PREFECT_YAML.read_text())
    pools = {d["name"]: d["work_pool"]["name"] for d in conf["deployments"] if d["entrypoint"] == entrypoint}
    assert pools == {"local": "local", "gpu": "gpu"}
