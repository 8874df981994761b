"""The Kubernetes pools' base job templates render Jobs a cluster accepts, for every deployment on them.

No cluster runs here: prefect-kubernetes renders the manifest exactly as its worker would, and
kubernetes-validate checks it strictly against the Kubernetes 1.30 and 1.33 schemas offline. The one
exception (infra/README.md): prefect-kubernetes 0.8 refuses a template without `completions` and
`parallelism` in the pod spec, where no schema has them; the API server drops them with a warning.
The tests check that these two are the only fields a strict check rejects.
"""

import json

import pytest
import yaml
from job_templates import render as _render
from job_templates import strictly_valid as _strictly_valid

from mlyard.prefect_setup import CPU_TEMPLATE, GPU_TEMPLATE, PREFECT_YAML

TEMPLATES = {"gpu": GPU_TEMPLATE, "cpu": CPU_TEMPLATE}


def test_a_gpu_training_job_is_strictly_valid_and_asks_for_gpus(stack):
    from mlyard.core.specs import TrainingSpec

    spec = TrainingSpec(name="big", source_uri="s3://b/algo", entry_point="train.py", image="registry.local/mlyard:gpu",
                        resources={"gpu_count": 2, "gpu_type": "NVIDIA-A100-SXM4-80GB", "cpu": 8, "memory": "64Gi",
                                   "data_storage": "300Gi"})
    values = {**spec.job_variables(), "image_pull_secrets": [{"name": "regcred"}], "service_account_name": "mlyard"}
    manifest = _strictly_valid(_render(json.loads(GPU_TEMPLATE.read_text()), values))
    pod = manifest["spec"]["template"]["spec"]
    container, code_host = pod["containers"][0], pod["initContainers"][0]
    # the user's code runs in the code host (tasks/code_host.py): it gets the GPUs and the requests
    assert code_host["resources"]["limits"]["nvidia.com/gpu"] == 2 and code_host["image"] == "registry.local/mlyard:gpu"
    assert code_host["resources"]["limits"]["memory"] == "64Gi" and code_host["resources"]["requests"]["cpu"] == "8"
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and container["resources"]["limits"]["memory"] == "64Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "mlyard"
    assert container["image"] == "registry.local/mlyard:gpu"
    # the pod runs Prefect's engine itself: not `prefect flow-run execute`, whose CLI and workspace
    # supervisor are two more Python processes (about 5 s of CPU) before the flow begins
    assert container["args"] == ["python", "-m", "prefect.engine"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"  # NCCL and DataLoader workers need it
    data = volumes[mounts["/mlyard/data"]]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert data["resources"]["requests"]["storage"] == "300Gi"  # the seed's data storage size
    assert "storageClassName" not in data  # unset: the cluster's default StorageClass
    assert pod["securityContext"]["fsGroup"] == 10001  # the bound volume is the run's user's to write
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 86400  # finished Jobs do not pile up
    classed = _strictly_valid(_render(json.loads(GPU_TEMPLATE.read_text()), {**values, "data_storage_class": "fast"}))
    data = next(v for v in classed["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert data["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "fast"


def _deployments(pool: str):
    conf = yaml.safe_load(PREFECT_YAML.read_text())
    return [d for d in conf["deployments"] if d["work_pool"]["name"] == pool]


@pytest.mark.parametrize("pool", ["gpu", "cpu"])
def test_every_deployment_on_a_kubernetes_pool_renders_a_strictly_valid_job(stack, pool):
    deployments = _deployments(pool)
    assert deployments, pool
    template = json.loads(TEMPLATES[pool].read_text())
    for d in deployments:
        values = {k: ("registry.local/mlyard:0.1.0" if k == "image" else v)
                  for k, v in (d["work_pool"].get("job_variables") or {}).items()}
        manifest = _strictly_valid(_render(template, values))
        pod = manifest["spec"]["template"]["spec"]
        limits = pod["initContainers"][0]["resources"].get("limits", {})  # the code host's: the user's code
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["MLYARD_HOME"] == "/mlyard/data", d["entrypoint"]  # scratch on the run's data storage
        # the shared stores' URLs and credentials: the ConfigMap and the Secret of infra/k8s, never plain values
        container = pod["containers"][0]
        assert container["envFrom"] == [{"configMapRef": {"name": "mlyard-config", "optional": True}}]
        settings = next(v for v in pod["volumes"] if v["name"] == "settings")
        assert settings["secret"]["secretName"] == "mlyard-settings"
        assert {"name": "settings", "mountPath": "/var/run/secrets/mlyard", "readOnly": True} in container["volumeMounts"]
        # the code host beside it (the user's code) has none of the platform's: no Secret, no token, no envFrom
        code_host = pod["initContainers"][0]
        assert {m["name"] for m in code_host["volumeMounts"]} <= {"tmp", "data", "dshm"} and "envFrom" not in code_host
        assert pod["automountServiceAccountToken"] is False and {"name": "MLYARD_CODE_HOST", "value": "/tmp/mlyard-code"} \
            in container["env"]
        assert env["MLYARD_POD_IMAGE"] == container["image"], "a training checks its image against the spec's"
        # the runs that apply objects (their accounts may) reach the cluster's API; no other run's pod does
        # (infra/k8s/base/network-policies.yaml: runs, runs-cluster-api)
        applies = pod.get("serviceAccountName") in ("mlyard-endpoints", "mlyard-notebooks")
        labels = manifest["spec"]["template"]["metadata"]["labels"]
        assert (labels.get("mlyard.io/cluster-api") == "allowed") == applies, (d["name"], labels)
        assert "prefect.io/flow-run-id" in labels, "the runs' NetworkPolicies select the pod by it"
        if pool == "cpu":  # no GPU request, no GPU toleration or node selector
            assert "nvidia.com/gpu" not in json.dumps(manifest), d["entrypoint"]
        else:
            assert limits["nvidia.com/gpu"] >= 1, d["entrypoint"]


def test_the_scheduler_and_pipeline_runs_run_on_the_cpu_pool():
    """None asks for a GPU: the scheduler loops, a pipeline run hands its steps to the KFP server, an endpoint
    change applies a stage's objects, a notebook's run applies its StatefulSet (which asks for the GPUs itself), a RAG's
    sync embeds on the CPU and applies its query service, and
    the lifecycle's runs a cluster's pod queues as `pool: local` (trainings, tunings, batches and evaluations: the CPU
    training image)."""
    endpoint_flows = ["mlyard.flows.endpoint_add_stage.add_stage", "mlyard.flows.endpoint_delete.delete_endpoint",
                      "mlyard.flows.endpoint_deploy.deploy_endpoint", "mlyard.flows.endpoint_promote.promote_stage",
                      "mlyard.flows.endpoint_retry.retry_stage", "mlyard.flows.endpoint_rollout.control_promotion",
                      "mlyard.flows.endpoint_rollout.promote_progressively", "mlyard.flows.endpoint_start.start_stage",
                      "mlyard.flows.endpoint_stop.stop_stage", "mlyard.flows.endpoint_traffic.set_traffic"]
    lifecycle = ["mlyard.flows.batch_inference.batch_infer", "mlyard.flows.batch_worker.batch_worker",
                 "mlyard.flows.evaluation.evaluate"]
    assert sorted(d["entrypoint"] for d in _deployments("cpu")) == sorted(lifecycle + endpoint_flows + [
        "mlyard.flows.notebook.notebook", "mlyard.flows.pipeline_run.pipeline_run", "mlyard.flows.rag.rag_sync",
        "mlyard.flows.scheduler.scheduler",
        "mlyard.flows.training.train", "mlyard.flows.tuning.tune"])
    from mlyard.core.names import on_this_platform

    runs = {*lifecycle, "mlyard.flows.training.train", "mlyard.flows.tuning.tune"}
    for d in _deployments("cpu"):  # a member's runs in the CPU training image; the platform's flows in its own
        wanted = "{{ $MLYARD_TRAINING_CPU_IMAGE }}" if d["entrypoint"] in runs else "{{ $MLYARD_IMAGE }}"
        assert d["work_pool"]["job_variables"]["image"] == wanted, d["name"]
    assert on_this_platform("train/train-local") == "train/train-local"  # not in a pod here
    assert "mlyard.flows.pipeline_run.pipeline_run" not in [d["entrypoint"] for d in _deployments("gpu")]


@pytest.mark.parametrize("pool", ["gpu", "cpu"])
def test_template_exposes_the_job_variables(pool):
    props = json.loads(TEMPLATES[pool].read_text())["variables"]["properties"]
    names = ["cpu_request", "memory_limit", "image", "image_pull_secrets", "service_account_name", "data_storage_size",
             "finished_job_ttl"] + (["gpu_count", "gpu_type", "tolerations", "shm_size"] if pool == "gpu" else [])
    for name in names:
        assert name in props and props[name].get("description"), name


@pytest.mark.parametrize("entrypoint", ["mlyard.flows.training.train", "mlyard.flows.tuning.tune", "mlyard.flows.batch_inference.batch_infer",
                                        "mlyard.flows.batch_worker.batch_worker", "mlyard.flows.evaluation.evaluate"])
def test_prefect_yaml_declares_every_flow_on_every_pool(entrypoint):
    """This machine's, the cluster's gpu pool, and its cpu pool (`-kubernetes`: what `-local` is from a cluster's pod,
    core/names.on_this_platform)."""
    conf = yaml.safe_load(PREFECT_YAML.read_text())
    pools = {d["name"]: d["work_pool"]["name"] for d in conf["deployments"] if d["entrypoint"] == entrypoint}
    assert sorted(pools.values()) == ["cpu", "gpu", "local"]
    assert all(name.endswith(f"-{'kubernetes' if pool == 'cpu' else pool}") for name, pool in pools.items())


def test_with_a_kueue_queue_the_gpu_pools_jobs_carry_its_label(stack, monkeypatch):
    """Kueue admits a Job labelled with a LocalQueue against that queue's GPU quota (tasks/orchestration)."""
    from mlyard.core.specs import TrainingSpec
    from mlyard.tasks.orchestration import KUEUE_QUEUE_LABEL, with_queue_label

    spec = TrainingSpec(name="trial", source_uri="s3://b/algo", entry_point="train.py", resources={"gpu_count": 1})
    assert with_queue_label(spec.job_variables()) == spec.job_variables()  # no queue named: no label
    monkeypatch.setenv("MLYARD_KUEUE_QUEUE", "gpu")
    manifest = _strictly_valid(_render(json.loads(GPU_TEMPLATE.read_text()), with_queue_label(spec.job_variables())))
    assert manifest["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu"
    assert "prefect.io/flow-run-id" in manifest["metadata"]["labels"]  # Prefect's own labels are kept
    assert "mlyard.io/cluster-api" not in manifest["spec"]["template"]["metadata"]["labels"], "a run: not the API"
    # a multi-node training's coordinator makes its nodes' Job: its pod may reach the API, beside the queue's label
    nodes = spec.model_copy(update={"nodes": 2})
    coordinator = _render(json.loads(GPU_TEMPLATE.read_text()), with_queue_label(nodes.job_variables()))
    labels = coordinator["spec"]["template"]["metadata"]["labels"]
    assert labels["mlyard.io/cluster-api"] == "allowed" and labels[KUEUE_QUEUE_LABEL] == "gpu", labels
