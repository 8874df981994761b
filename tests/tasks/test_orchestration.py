"""Which run names Prefect made up (and a flow renames from its spec) and which a person typed (kept)."""

from prefect.utilities.names import generate_slug

from mlyard.tasks.orchestration import made_up_by_prefect


def test_names_prefect_makes_up_are_told_from_names_a_person_types():
    # the server's, for a run made without a name (`prefect deployment run`, a deployment's own schedule)
    assert all(made_up_by_prefect(generate_slug(2)) for _ in range(2000))
    # the Run form's suggestion (prefect-ui-library's runName: a star's name), seen in Prefect 3.8's UI
    for name in ("alpha3-centauri", "beta-andromedae-nebula", "omega417-canis-majoris-b", "gamma-ursae-majoris"):
        assert made_up_by_prefect(name), name
    # what people type in the Run form's Run Name
    for name in ("my-first-run", "lr-sweep-3", "digits", "digits-tuned-lr", "baseline", "retry-after-fix"):
        assert not made_up_by_prefect(name), name


def test_a_cluster_has_no_local_pool_so_its_pods_queue_the_flows_cluster_deployment(monkeypatch):
    """The mlyard API's pod queues a member's notebook or endpoint change as on one machine
    (FLOW/FLOW-local); on a cluster that is the flow's deployment on the cpu pool."""
    from mlyard.core.names import on_this_platform

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert on_this_platform("notebook/notebook-local") == "notebook/notebook-local"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert on_this_platform("notebook/notebook-local") == "notebook/notebook-kubernetes"
    assert on_this_platform("train/train-gpu") == "train/train-gpu"


def test_a_pool_takes_the_job_variables_its_template_has_and_gpus_only_where_it_has_them():
    """The cpu pool is a cluster's `pool: local`: a run asking it for GPUs is refused in one line, before anything
    is queued; what its template does not know (a gpu pool's tolerations) is not handed to it."""
    import json
    from types import SimpleNamespace

    import pytest

    from mlyard.core.errors import SpecError
    from mlyard.core.specs import TrainingSpec
    from mlyard.prefect_setup import CPU_TEMPLATE, GPU_TEMPLATE
    from mlyard.tasks.orchestration import pool_job_variables

    cpu = SimpleNamespace(name="cpu", type="kubernetes", base_job_template=json.loads(CPU_TEMPLATE.read_text()))
    gpu = SimpleNamespace(name="gpu", type="kubernetes", base_job_template=json.loads(GPU_TEMPLATE.read_text()))
    local = SimpleNamespace(name="local", type="process", base_job_template={})
    spec = TrainingSpec(name="t", source_uri="s3://b/a", entry_point="train.py", resources={"gpu_count": 2})
    with pytest.raises(SpecError, match=r"resources.gpu_count: 2 is not valid: 0 on the cpu pool.*--pool gpu"):
        pool_job_variables(cpu, spec.job_variables())
    assert pool_job_variables(gpu, spec.job_variables())["gpu_count"] == 2
    cpu_only = TrainingSpec(name="t", source_uri="s3://b/a", entry_point="train.py").job_variables()
    kept = pool_job_variables(cpu, {**cpu_only, "tolerations": [{"key": "nvidia.com/gpu"}]})
    assert "tolerations" not in kept and "gpu_count" not in kept
    assert set(kept) <= set(cpu.base_job_template["variables"]["properties"])
    assert pool_job_variables(local, spec.job_variables()) == {}
