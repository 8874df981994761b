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
