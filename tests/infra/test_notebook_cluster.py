"""A notebook on Kubernetes: its StatefulSet, claim template, Secret, Service and NetworkPolicy rendered
from infra/notebook/, strictly valid, and applied, stopped, rebooted and deleted on Kubernetes' own control
plane (tests/controlplane.py: the StatefulSet controller makes the claim and the pod); the notebook flow
against the API emulator (tests/kube_api.py), which the move of issue 69 has not reached yet."""

from __future__ import annotations

import kubernetes.client
import pytest

from mlyard.core.specs.notebook import NotebookSpec
from mlyard.tasks import notebook_cluster as nbk


def _client(kube):
    config = kubernetes.client.Configuration()
    config.host = kube.url
    return kubernetes.client.ApiClient(config)


def test_a_notebook_is_a_statefulset_whose_claim_outlives_stop_and_reboot_but_not_delete(control_plane):
    import time

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

    def until(what: str, check, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (got := check()):
            assert time.monotonic() < deadline, what
            time.sleep(0.3)
        return got

    pods = lambda: [p["metadata"]["name"] for p in kube.items("Pod", ns)]  # noqa: E731
    try:
        kube.create("Namespace", "v1", None, {"metadata": {"name": ns}})
        kube.create("PersistentVolumeClaim", "v1", ns, {"metadata": {"name": "nas-nas-1"}, "spec": {
            "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}}}, "platform-team")
        names = [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]
        assert nbk.apply(api, manifests, ns) == {"created": names, "changed": [], "unchanged": []}
        # the StatefulSet controller's part: the claim of its template, and the pod
        until("the controller made no pod", lambda: f"{obj}-0" in pods())
        assert kube.get("PersistentVolumeClaim", ns, f"data-{obj}-0")["spec"]["resources"]["requests"] == {
            "storage": "200Gi"}
        first = kube.get("Pod", ns, f"{obj}-0")["metadata"]["uid"]
        nbk.reboot(api, "explore", 7, ns)  # a new pod, on the same claim
        until("no new pod after the reboot", lambda: (kube.get_object("Pod", ns, f"{obj}-0") or {}).get(
            "metadata", {}).get("uid") not in (None, first))

        stopped = nbk.render("explore", 7, spec, "registry.example/notebook:1", "s3cret", replicas=0,
                             pull_secrets=("regcred",), namespace=ns)
        assert nbk.apply(api, stopped, ns) == {"created": [], "changed": [f"StatefulSet/{obj}"],
                                               "unchanged": names[:3]}
        assert kube.get("StatefulSet", ns, obj)["spec"]["replicas"] == 0
        until("the controller kept the pod of a stopped notebook", lambda: f"{obj}-0" not in pods())
        assert kube.get("PersistentVolumeClaim", ns, f"data-{obj}-0")  # the data storage stays

        nbk.reboot(api, "explore", 7, ns)  # stopped: nothing to reboot, and nothing starts
        assert f"{obj}-0" not in pods()

        gone = nbk.delete(api, "explore", 7, ns)
        assert gone == [f"StatefulSet/{obj}", f"Service/{obj}", f"NetworkPolicy/{obj}", f"Secret/{obj}-token",
                        f"PersistentVolumeClaim/data-{obj}-0"]
        left = until("the claim never went", lambda: (m := kube.made(ns)) and all(
            obj not in n for _, n in m) and m)  # a claim goes once no pod uses it (its protection finalizer)
        assert ("PersistentVolumeClaim", "nas-nas-1") in left, left
    finally:
        api.close()
        kube.drop_namespace(ns)


def test_the_notebook_flow_runs_a_registered_image_on_the_cluster(stack, settings, tmp_path, monkeypatch):
    """The front door's checks and the notebook flow (in this process, on the real Prefect server) against
    the emulator: a registered notebook image becomes the StatefulSet; stop scales it to 0; delete takes
    every object and the record."""
    from kube_api import KubeApi

    import mlyard.notebooks as api
    from mlyard.core.errors import SpecError
    from mlyard.core.specs.image import ImageSpec
    from mlyard.core.specs.notebook import NotebookAction
    from mlyard.flows.notebook import notebook
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.notebooks import Notebooks
    from mlyard.tasks.registry_secrets import images

    kube = KubeApi()
    try:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig", namespace="mlyard")))
        store = images(settings)
        store.create_image(ImageSpec(name="trainer-img", address="registry.example/trainer:1", kind="training"))
        store.create_image(ImageSpec(name="lab-img", address="registry.example/lab:1", kind="notebook"))
        with pytest.raises(SpecError, match="image: 'trainer-img'.*a notebook image"):
            api.create({"name": "gpu-nb", "image": "trainer-img", "instance_type": "gpu-1"})
        spec = NotebookSpec(name="gpu-nb", image="lab-img", instance_type="gpu-1", data_storage_gb=30)
        notebooks = Notebooks(Catalog(settings.catalog_db_url))
        record = notebooks.create("gpu-nb", spec.model_dump(mode="json"))  # what api.create records, then queues

        assert notebook(NotebookAction(notebook="gpu-nb", action="create")).status == "ACTIVE"
        sts = kube.get("StatefulSet", "mlyard", f"notebook-{record.id}")
        assert sts["spec"]["replicas"] == 1 and sts["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "registry.example/lab:1"
        assert api.show("gpu-nb")["status"] == "ACTIVE (UNHEALTHY)"  # no pod is ready: no kubelet here
        kube.set_status("StatefulSet", "mlyard", f"notebook-{record.id}", {"replicas": 1, "readyReplicas": 1})
        view = api.show("gpu-nb")
        # people open it through mlyard's front door, which reaches its Service (the only way its pod admits)
        assert view["status"] == "ACTIVE (HEALTHY)" and view["url"].endswith(f"/notebooks/{record.id}/lab")
        assert api.upstream(settings, notebooks.get("gpu-nb")) == f"http://notebook-{record.id}.mlyard.svc"

        assert notebook(NotebookAction(notebook="gpu-nb", action="stop")).status == "STOPPED"
        assert kube.get("StatefulSet", "mlyard", f"notebook-{record.id}")["spec"]["replicas"] == 0
        assert notebook(NotebookAction(notebook="gpu-nb", action="delete")).status == "DELETED"
        assert not [k for k in kube.objects if f"notebook-{record.id}" in k[2]]
        assert [n.name for n in notebooks.all()] == []
    finally:
        kube.close()
