"""A notebook on Kubernetes: its StatefulSet, claim template, Secret, Service and NetworkPolicy rendered
from infra/notebook/, strictly valid, and applied, stopped, rebooted and deleted against the Kubernetes
API emulator (tests/kube_api.py; no cluster runs here, so the test plays the StatefulSet controller)."""

from __future__ import annotations

import kubernetes.client
import pytest

from mlyard.core.specs.notebook import NotebookSpec
from mlyard.tasks import notebook_cluster as nbk


def _client(kube):
    config = kubernetes.client.Configuration()
    config.host = kube.url
    return kubernetes.client.ApiClient(config)


def test_a_notebook_is_a_statefulset_whose_claim_outlives_stop_and_reboot_but_not_delete():
    from kube_api import KubeApi

    spec = NotebookSpec(name="explore", instance_type="gpu-1", boot_storage_gb=50, data_storage_gb=200,
                        nas={"mount_name": "team", "uri": "nas://nas-1:/projects/a"})
    manifests = nbk.render("explore", 7, spec, "registry.example/notebook:1", "s3cret", pull_secrets=("regcred",))
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

    kube = KubeApi()
    try:
        api = _client(kube)
        kube.create("Namespace", "v1", None, {"metadata": {"name": "mlyard"}}, "test")
        kube.create("PersistentVolumeClaim", "v1", "mlyard", {"metadata": {"name": "nas-nas-1"}, "spec": {
            "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}}}, "platform-team")
        names = [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]
        assert nbk.apply(api, manifests, "mlyard") == {"created": names, "changed": [], "unchanged": []}
        # the StatefulSet controller's part: the pod and the claim of its template
        kube.create("PersistentVolumeClaim", "v1", "mlyard", {"metadata": {"name": f"data-{obj}-0"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "200Gi"}}}}, "statefulset-controller")
        kube.create("Pod", "v1", "mlyard", {"metadata": {"name": f"{obj}-0", "labels": {"mlyard.io/notebook": "7"}},
                                            "spec": sts["spec"]["template"]["spec"]}, "statefulset-controller")

        stopped = nbk.render("explore", 7, spec, "registry.example/notebook:1", "s3cret", replicas=0,
                             pull_secrets=("regcred",))
        assert nbk.apply(api, stopped, "mlyard") == {"created": [], "changed": [f"StatefulSet/{obj}"],
                                                     "unchanged": names[:3]}
        assert kube.get("StatefulSet", "mlyard", obj)["spec"]["replicas"] == 0
        assert kube.get("PersistentVolumeClaim", "mlyard", f"data-{obj}-0")  # the data storage stays

        nbk.reboot(api, "explore", 7, "mlyard")
        assert not [p for p in kube.items("Pod", "mlyard") if p["metadata"]["name"] == f"{obj}-0"]

        gone = nbk.delete(api, "explore", 7, "mlyard")
        assert gone == [f"StatefulSet/{obj}", f"Service/{obj}", f"NetworkPolicy/{obj}", f"Secret/{obj}-token",
                        f"PersistentVolumeClaim/data-{obj}-0"]
        left = {(k, n) for k, _, n in kube.objects}
        assert ("PersistentVolumeClaim", "nas-nas-1") in left and not any(obj in n for _, n in left)
    finally:
        kube.close()


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
