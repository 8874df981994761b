"""A notebook on Kubernetes: its StatefulSet, claim template, Secret, Service and NetworkPolicy rendered
from infra/notebook/, strictly valid, and applied, stopped, rebooted and deleted on Kubernetes' own control
plane (tests/controlplane.py: the StatefulSet controller makes the claim and the pod), and the notebook flow
run there too."""

from __future__ import annotations

import time

import pytest

from mlyard.core.specs.notebook import NotebookSpec
from mlyard.tasks import notebook_cluster as nbk


def _until(what: str, check, timeout: float = 60):
    """`check()`'s first true value within `timeout` s (asserting `what` otherwise)."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.3)
    return got


def test_a_notebook_is_a_statefulset_whose_claim_outlives_stop_and_reboot_but_not_delete(control_plane):
    from kubelet_node import ClusterApi

    spec = NotebookSpec(name="explore", instance_type="gpu-1", boot_storage_gb=50, data_storage_gb=200,
                        nas={"mount_name": "team", "uri": "nas://nas-1:/projects/a"})
    ns = "notebooks"
    manifests = nbk.render("explore", 7, spec, "registry.example/notebook:1", "s3cret", pull_secrets=("regcred",),
                           namespace=ns)
    nbk.validate(manifests)  # the Kubernetes 1.30 schema, strict
    secret, service, policy, sts = manifests
    obj = "notebook-7"
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("Secret", f"{obj}-token"), ("Service", obj), ("NetworkPolicy", obj), ("StatefulSet", obj)]
    pod = sts["spec"]["template"]["spec"]
    box = pod["containers"][0]
    assert box["resources"]["limits"] == {"cpu": "8", "memory": "60Gi", "nvidia.com/gpu": "1"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["securityContext"]["runAsNonRoot"] and box["securityContext"]["allowPrivilegeEscalation"] is False
    assert box["command"][:3] == ["python", "-m", "mlyard.tasks.notebook_boot"] and "s3cret" not in str(box)
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {"storage": "200Gi"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["boot"]["emptyDir"] == {"sizeLimit": "50Gi"}
    assert volumes["nas"]["persistentVolumeClaim"] == {"claimName": "nas-nas-1"}
    assert {"name": "nas", "mountPath": "/mlyard/nas/team", "subPath": "projects/a"} in box["volumeMounts"]
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlyard-api"}

    kube = ClusterApi(control_plane.url, control_plane.ssl_context())
    api = control_plane.api_client()

    pods = lambda: [p["metadata"]["name"] for p in kube.items("Pod", ns)]  # noqa: E731
    try:
        kube.create("Namespace", "v1", None, {"metadata": {"name": ns}})
        kube.create("PersistentVolumeClaim", "v1", ns, {"metadata": {"name": "nas-nas-1"}, "spec": {
            "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}}}, "platform-team")
        names = [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]
        assert nbk.apply(api, manifests, ns) == {"created": names, "changed": [], "unchanged": []}
        # the StatefulSet controller's part: the claim of its template, and the pod
        _until("the controller made no pod", lambda: f"{obj}-0" in pods())
        assert kube.get("PersistentVolumeClaim", ns, f"data-{obj}-0")["spec"]["resources"]["requests"] == {
            "storage": "200Gi"}
        first = kube.get("Pod", ns, f"{obj}-0")["metadata"]["uid"]
        nbk.reboot(api, "explore", 7, ns)  # a new pod, on the same claim
        _until("no new pod after the reboot", lambda: (kube.get_object("Pod", ns, f"{obj}-0") or {}).get(
            "metadata", {}).get("uid") not in (None, first))

        stopped = nbk.render("explore", 7, spec, "registry.example/notebook:1", "s3cret", replicas=0,
                             pull_secrets=("regcred",), namespace=ns)
        assert nbk.apply(api, stopped, ns) == {"created": [], "changed": [f"StatefulSet/{obj}"],
                                               "unchanged": names[:3]}
        assert kube.get("StatefulSet", ns, obj)["spec"]["replicas"] == 0
        _until("the controller kept the pod of a stopped notebook", lambda: f"{obj}-0" not in pods())
        assert kube.get("PersistentVolumeClaim", ns, f"data-{obj}-0")  # the data storage stays

        nbk.reboot(api, "explore", 7, ns)  # stopped: nothing to reboot, and nothing starts
        assert f"{obj}-0" not in pods()

        gone = nbk.delete(api, "explore", 7, ns)
        assert gone == [f"StatefulSet/{obj}", f"Service/{obj}", f"NetworkPolicy/{obj}", f"Secret/{obj}-token",
                        f"PersistentVolumeClaim/data-{obj}-0"]
        left = _until("the claim never went", lambda: (m := kube.made(ns)) and all(
            obj not in n for _, n in m) and m)  # a claim goes once no pod uses it (its protection finalizer)
        assert ("PersistentVolumeClaim", "nas-nas-1") in left, left
    finally:
        api.close()
        kube.drop_namespace(ns)


def test_the_notebook_flow_runs_a_registered_image_on_the_cluster(stack, settings, real_api, provisioner,
                                                                   control_plane, tmp_path, monkeypatch):
    """The front door's checks and the notebook flow (in this process, on the real Prefect server) on the
    control plane: a registered notebook image becomes the StatefulSet, whose controller makes the pod; it
    is healthy once the node reports that pod ready (the node's kubelet, tests/kubelet_node.py, does not run
    the notebook's server here: the local notebook tests run it); stop scales it to 0; delete takes every
    object and the record."""
    from kubelet_node import NodeKubelet

    import mlyard.notebooks as api
    from mlyard.core.errors import SpecError
    from mlyard.core.specs.image import ImageSpec
    from mlyard.core.specs.notebook import NotebookAction
    from mlyard.flows.notebook import notebook
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.notebooks import Notebooks
    from mlyard.tasks.registry_secrets import images

    kube = real_api  # KUBECONFIG: the cluster's admin, namespace mlyard

    node = NodeKubelet(control_plane, f"gpu-{tmp_path.name[-12:].strip('_-').lower().replace('_', '-')}", "/",
                       capacity={"nvidia.com/gpu": "8", "cpu": "64", "memory": "512Gi"}, runs=lambda pod: False)
    try:
        store = images(settings)
        store.create_image(ImageSpec(name="trainer-img", address="registry.example/trainer:1", kind="training"))
        store.create_image(ImageSpec(name="lab-img", address="registry.example/lab:1", kind="notebook"))
        with pytest.raises(SpecError, match="image: 'trainer-img'.*a notebook image"):
            api.create({"name": "gpu-nb", "image": "trainer-img", "instance_type": "gpu-1"})
        spec = NotebookSpec(name="gpu-nb", image="lab-img", instance_type="gpu-1", data_storage_gb=30)
        notebooks = Notebooks(Catalog(settings.catalog_db_url))
        record = notebooks.create("gpu-nb", spec.model_dump(mode="json"))  # what api.create records, then queues
        obj = f"notebook-{record.id}"

        assert notebook(NotebookAction(notebook="gpu-nb", action="create")).status == "ACTIVE"
        sts = kube.get("StatefulSet", "mlyard", obj)
        assert sts["spec"]["replicas"] == 1 and sts["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "registry.example/lab:1"
        assert api.show("gpu-nb")["status"] == "ACTIVE (UNHEALTHY)"  # its pod is not ready yet
        pod = _until("the pod was not placed on the GPU node", lambda: (
            p := kube.get_object("Pod", "mlyard", f"{obj}-0")) and p["spec"].get("nodeName") == node.name and p)
        node.node_api.set_status("Pod", "mlyard", pod["metadata"]["name"], {"phase": "Running"})  # Ready, as its node says
        view = _until("the StatefulSet never counted its pod ready", lambda: (
            v := api.show("gpu-nb"))["status"] == "ACTIVE (HEALTHY)" and v)
        # people open it through mlyard's front door, which reaches its Service (the only way its pod admits)
        assert view["url"].endswith(f"/notebooks/{record.id}/lab")
        assert api.upstream(settings, notebooks.get("gpu-nb")) == f"http://{obj}.mlyard.svc"

        assert notebook(NotebookAction(notebook="gpu-nb", action="stop")).status == "STOPPED"
        assert kube.get("StatefulSet", "mlyard", obj)["spec"]["replicas"] == 0
        _until("the controller kept the pod of a stopped notebook", lambda: not kube.get_object("Pod", "mlyard", f"{obj}-0"))
        assert notebook(NotebookAction(notebook="gpu-nb", action="delete")).status == "DELETED"
        _until("the notebook's objects stayed", lambda: not [n for _, n in kube.made("mlyard") if obj in n])
        assert [n.name for n in notebooks.all()] == []
        _the_installs_image(api, notebooks, kube, monkeypatch, settings)
    finally:
        node.close()


def _the_installs_image(api, notebooks, kube, monkeypatch, settings) -> None:
    """On a cluster install (its ConfigMap's MLYARD_NOTEBOOK_IMAGE, values.images.notebook), a notebook that
    names no image runs the install's, pulled with the install's pull Secrets: a GPU one too, which `python`
    (this machine's) would have refused."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from mlyard.core.specs.notebook import NotebookAction
    from mlyard.flows.notebook import notebook

    monkeypatch.setenv("MLYARD_NOTEBOOK_IMAGE", "registry.example/mirror/mlyard-notebook:2")
    monkeypatch.setenv("MLYARD_IMAGE_PULL_SECRETS", "regcred")
    monkeypatch.setenv("MLYARD_MLFLOW_TRACKING_URI", settings.mlflow_uri)  # a pod's stores are named, never its own
    monkeypatch.setenv("MLYARD_CATALOG_URL", settings.catalog_db_url)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # as the API's pod queues it: notebook-kubernetes,
    made = api.create({"name": "plain-nb", "instance_type": "gpu-1", "data_storage_gb": 1})  # which no worker here serves
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(made["flow_run_id"], Cancelled(message="run here instead"), force=True)
    assert notebooks.get("plain-nb").spec["image"] == "registry.example/mirror/mlyard-notebook:2"
    assert notebook(NotebookAction(notebook="plain-nb", action="create")).status == "ACTIVE"
    pod = kube.get("StatefulSet", "mlyard", f"notebook-{notebooks.get('plain-nb').id}")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/mirror/mlyard-notebook:2"
    assert {"name": "regcred"} in pod["imagePullSecrets"]
    assert notebook(NotebookAction(notebook="plain-nb", action="delete")).status == "DELETED"


def test_a_notebook_made_through_the_cluster_deployment_opens_with_the_token_the_door_derives(
        platform_nodes, cluster_stores, settings, control_plane, monkeypatch, tmp_path):
    """A notebook on a cluster as a member makes it (issue 70 §1): the mlyard API's pod queues the notebook
    flow, which on a cluster is `notebook/notebook-kubernetes` (the cpu pool, as the install's account
    `mlyard-notebooks`, its Role used with its own token). Its run applies the StatefulSet, whose pod runs
    JupyterLab on a node here; the token in its Secret is the one the front door derives from the platform's
    credential (the door reads no Secret and keeps no file), and it opens the notebook. Deleting it through the
    same deployment takes every object. And `mlyard logs` finds the runs' records as the API's pods read them,
    through the pods' logs, as the account `mlyard-api` (tasks/logpods.py)."""
    from kube_cluster import NS, final
    from pydantic import SecretStr

    import mlyard.notebooks as api
    from mlyard.core.names import FLOW_NOTEBOOK, deployment
    from mlyard.core.specs.image import ImageSpec
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.notebooks import Notebooks
    from mlyard.tasks.notebook_cluster import object_name
    from mlyard.tasks.orchestration import submit
    from mlyard.tasks.registry_secrets import images

    kube = platform_nodes.api
    cluster = cluster_stores.settings(settings).model_copy(update={
        "internal_token": SecretStr(cluster_stores.internal_token), "kube_namespace": NS})
    images(cluster).create_image(ImageSpec(name="lab-img", address="registry.example/lab:1", kind="notebook"))
    spec = NotebookSpec(name="lab", image="lab-img", instance_type="cpu-1", data_storage_gb=1)
    record = Notebooks(Catalog(cluster.catalog_db_url)).create("lab", spec.model_dump(mode="json"))
    obj = object_name(record.id)

    def run(action: str) -> str:
        with monkeypatch.context() as m:  # as the API's pod submits it (the kubelet sets this in every pod)
            m.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
            fr = submit(deployment(FLOW_NOTEBOOK), {"spec": {"notebook": "lab", "action": action}})
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            assert client.read_deployment(fr.deployment_id).name == "notebook-kubernetes"
        done = final(str(fr.id), 300)
        assert done.state.type.value == "COMPLETED", (done.state.message or "")[:3000]
        return str(fr.id)

    created = run("create")
    sts = kube.get("StatefulSet", NS, obj)
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/lab:1"
    pod = _until("JupyterLab never became ready in the notebook's pod", lambda: (
        p := kube.get_object("Pod", NS, f"{obj}-0")) and p["status"].get("podIP") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []) and p, 240)
    import base64
    import urllib.error
    import urllib.request

    kept = base64.b64decode(kube.get("Secret", NS, f"{obj}-token")["data"]["token"]).decode()
    derived = api.token(cluster, Notebooks(Catalog(cluster.catalog_db_url)).get("lab"))
    assert kept == derived  # what the door sends (mlyard/door_pages.py) is what the notebook was given
    where = f"http://{pod['status']['podIP']}:8888/notebooks/{record.id}/api/status"
    with urllib.request.urlopen(urllib.request.Request(where, headers={"Authorization": f"token {derived}"}),
                                timeout=10) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(where, timeout=10)
    assert refused.value.code == 403

    deleted = run("delete")
    _until("the notebook's objects stayed", lambda: not [n for _, n in kube.made(NS) if obj in n])
    assert [n.name for n in Notebooks(Catalog(cluster.catalog_db_url)).all()] == []

    # the runs' records, as an API pod gathers them into its index (a second look adds nothing)
    from pod_moves import account_client

    from mlyard.tasks.logpods import PodLogs
    from mlyard.tasks.logstore import LogStore

    pods = PodLogs(tmp_path / "api-home", account_client(kube, control_plane, NS, "mlyard-api"), NS)
    assert pods.gather() > 0 and pods.gather() == 0
    index = LogStore(tmp_path / "api-home")
    index.catch_up()
    for run_id in (created, deleted):
        found = index.query(ids={"flow_run_id": run_id}, limit=1000)
        assert found and {(r["flowRunId"], r["category"]) for r in found} == {(run_id, "mlyard.notebook")}, found[:3]
        assert any("Completed" in r["body"] for r in found), [r["body"] for r in found]
