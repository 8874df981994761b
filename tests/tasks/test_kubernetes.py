"""An endpoint stage as Kubernetes manifests, rendered from infra/endpoint/ and checked against the
Kubernetes schema, and applied as the endpoint flow applies them to Kubernetes' own API server
(tests/controlplane.py: server-side apply with field ownership, the controllers at work)."""

import json

import pytest

from mlyard.core.errors import SpecError
from mlyard.core.specs.endpoint import EndpointSpec, NodeAutoscaler, PodAutoscaler, StageResourceSpec, StageSpec
from mlyard.registry.endpoints import Endpoints
from mlyard.tasks import kubernetes as k8s


@pytest.fixture()
def view(tmp_path):
    from mlyard.registry import Catalog

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    eps = Endpoints(catalog)
    spec = EndpointSpec(name="iris-api", stage=StageSpec(
        instance_type="m2.c4m8", node_autoscaler=NodeAutoscaler(enabled=True, min_nodes=1, max_nodes=4,
                                                                 usage_threshold_percent=40),
        resources=[StageResourceSpec(model="iris/2", cpu=0.5, memory="512Mi", pods=2,
                                     pod_autoscaler=PodAutoscaler(enabled=True, metric="memory", threshold_percent=70,
                                                                  max_pods=6)),
                   StageResourceSpec(model="bert/1", gpu=1, memory="4Gi")]))
    yield eps.create(spec, [("iris", "2"), ("bert", "1")])
    catalog.dispose()


def test_a_stage_renders_to_valid_deployments_services_and_an_hpa(view):
    manifests = k8s.render_stage(view, "default", image="registry.local/mlyard:1", parameters={
        "bert/1": {"task": "fill_mask", "maxLength": "64"}})
    k8s.validate(manifests)  # the Kubernetes 1.30 schema, strict
    kinds = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    first, second = (r["id"] for r in view["stages"][0]["resources"])
    assert kinds == [("Deployment", f"iris-api-default-r{first}"), ("Service", f"iris-api-default-r{first}"),
                     ("NetworkPolicy", f"iris-api-default-r{first}"),
                     ("PodDisruptionBudget", f"iris-api-default-r{first}"),
                     ("HorizontalPodAutoscaler", f"iris-api-default-r{first}"),
                     ("Deployment", f"iris-api-default-r{second}"), ("Service", f"iris-api-default-r{second}"),
                     ("NetworkPolicy", f"iris-api-default-r{second}"), ("PodDisruptionBudget", f"iris-api-default-r{second}")]
    iris, _, policy, budget, hpa, bert, _, _, _ = manifests
    # a drain takes one replica at a time; the replicas spread over nodes; each is let go of before it stops
    assert budget["spec"] == {"maxUnavailable": 1, "selector": iris["spec"]["selector"]}
    pod = iris["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["topologySpreadConstraints"][0]["labelSelector"] == iris["spec"]["selector"]
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["terminationGracePeriodSeconds"] > 5 + 25 - 1  # the preStop, then the server's drain
    # only the gateway's pods reach the replicas, on their serving port
    assert policy["spec"]["podSelector"]["matchLabels"] == iris["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "gateway"}}}], "ports": [{"protocol": "TCP", "port": "http"}]}]
    container = iris["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["mlyard", "serve", "models:/iris/2"]
    # a record per request in the pod's log, where `mlyard endpoints logs` reads them (tasks/logpods.py)
    assert container["args"][container["args"].index("--inference-log") + 1] == "-"
    # a model is code: its server's container holds, of the platform, the replicas' credential alone; the
    # version's files come from an init container, the one that mounts the settings Secret (the artifacts' keys)
    (fetch,) = iris["spec"]["template"]["spec"]["initContainers"]
    assert fetch["args"] == ["mlyard", "models", "download", "models:/iris/2", "--to", "/models"]
    assert {m["name"] for m in fetch["volumeMounts"]} == {"settings", "models"}
    assert {m["name"] for m in container["volumeMounts"]} == {"models", "tmp"}
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] == "models")
    served = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(served["MLYARD_MODEL_FILES"])["models:/iris/2"]["path"] == "/models"
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
                and e["valueFrom"]["secretKeyRef"]["key"] != "mlyard_replica_token"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert iris["spec"]["replicas"] == 2
    assert iris["spec"]["template"]["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "m2.c4m8"}
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["metrics"][0]["resource"] == {"name": "memory", "target": {"type": "Utilization",
                                                                                  "averageUtilization": 70}}
    bert_c = bert["spec"]["template"]["spec"]["containers"][0]
    assert bert_c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert ["--param", "task=fill_mask"] == bert_c["args"][-6:-4]  # the version's parameters, names as given
    assert bert_c["args"][-2:] == ["--max-body-mb", "32.0"]  # the body limit the gateway takes for it
    env = {e["name"]: e.get("value") or e["valueFrom"] for e in bert_c["env"]}
    assert env["MAX_LENGTH"] == "64" and env["MLYARD_ENDPOINT_ID"] == "iris-api"
    # the replicas' credential from the settings Secret (required: no pod serves unguarded), and of that
    # Secret only the registry's and the artifacts' settings: never the internal credential
    assert env["MLYARD_REPLICA_TOKEN"] == {"secretKeyRef": {"name": "mlyard-settings", "key": "mlyard_replica_token"}}
    volume = next(v for v in bert["spec"]["template"]["spec"]["volumes"] if v["name"] == "settings")
    keys = [item["key"] for item in volume["secret"]["items"]]
    assert "mlyard_catalog_url" in keys and "mlyard_s3_secret_access_key" in keys
    assert not [k for k in keys if "internal" in k]


def test_a_runtime_variant_stage_is_its_engines_deployment_with_backend_ais_probes(tmp_path, monkeypatch):
    """A vllm resource: vLLM's image (the values can change it) serving /models, which an init container of
    mlyard's image fills with the version's files; the startup probe waits out vLLM's 300 s of loading
    (Backend.AI's initial delay) before readiness follows /health; GPUs asked; strictly valid."""
    from mlyard.registry import Catalog

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        view = Endpoints(catalog).create(EndpointSpec(name="chat", stage=StageSpec(instance_type="g2", resources=[
            StageResourceSpec(model="llama/3", gpu=1, memory="24Gi",
                              runtime={"variant": "vllm", "args": ["--max-model-len", "4096"], "environ": {"A": "1"}}),
            StageResourceSpec(model="tool/1", runtime="cmd")])), [("llama", "3"), ("tool", "1")])
        with pytest.raises(SpecError, match="runtime.image"):  # cmd runs its image's own command: name the image
            k8s.render_stage(view, "default", image="registry.local/mlyard:1")
        monkeypatch.setenv("MLYARD_RUNTIME_IMAGES", '{"cmd": "registry.local/tool:2"}')
        manifests = k8s.render_stage(view, "default", image="registry.local/mlyard:1")
    finally:
        catalog.dispose()
    k8s.validate(manifests)
    vllm, _, _, _, tool, _, _, _ = manifests
    pod = vllm["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert engine["image"] == "vllm/vllm-openai:v0.11.0"
    assert engine["command"] == ["vllm", "serve", "/models", "--host", "0.0.0.0", "--port", "8000"]
    assert engine["args"] == ["--max-model-len", "4096"] and engine["ports"][0]["containerPort"] == 8000
    assert engine["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert engine["startupProbe"]["periodSeconds"] * engine["startupProbe"]["failureThreshold"] >= 300
    assert engine["readinessProbe"]["httpGet"]["path"] == "/health"
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "A", "value": "1"} in engine["env"] and {"name": "models", "mountPath": "/models",
                                                              "readOnly": True} in engine["volumeMounts"]
    fetch = pod["initContainers"][0]
    assert fetch["image"] == "registry.local/mlyard:1"
    assert fetch["args"] == ["mlyard", "models", "download", "models:/llama/3", "--to", "/models"]
    tool_engine = tool["spec"]["template"]["spec"]["containers"][0]
    assert tool_engine["image"] == "registry.local/tool:2" and "command" not in tool_engine and "args" not in tool_engine
    assert tool_engine["readinessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 10}  # no health path


def test_node_autoscaler_annotations_and_long_names(view):
    notes = k8s.node_pool_annotations(view, "default")
    assert notes["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"] == "4"
    assert notes["cluster-autoscaler.kubernetes.io/scale-down-utilization-threshold"] == "0.4"
    name = k8s.resource_name("a" * 50, "b" * 50, 12345)
    assert len(name) <= 63 and name.endswith("-r12345")
    with pytest.raises(SpecError, match="a stage of endpoint"):
        k8s.render_stage(view, "nope")


def test_an_invalid_manifest_is_refused_naming_it(view):
    manifests = k8s.render_stage(view, "default")
    manifests[0]["spec"]["replicas"] = "two"
    with pytest.raises(SpecError, match="Deployment/iris-api-default"):
        k8s.validate(manifests)


NAMESPACES = iter(range(1, 1000))


@pytest.fixture()
def kube(control_plane):
    """The control plane's admin, in a namespace of the test's own (gone after it)."""
    from kubelet_node import ClusterApi

    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    ns = f"stages-{next(NAMESPACES)}"
    api.create("Namespace", "v1", None, {"metadata": {"name": ns}})
    client = control_plane.api_client()
    try:
        yield api, client, ns
    finally:
        client.close()
        api.drop_namespace(ns)


def test_applying_a_stage_creates_then_changes_nothing_and_prunes_against_an_api_server(view, kube):
    kube, api, ns = kube
    manifests = k8s.render_stage(view, "default", pull_secrets=("regcred",), namespace=ns)
    first = k8s.apply_stage(api, manifests, ns, "iris-api", "default")
    names = [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]
    assert first == {"created": names, "changed": [], "unchanged": [], "deleted": []}
    assert len(kube.made(ns)) == 9, kube.made(ns)
    rv = kube.versions(ns)
    again = k8s.apply_stage(api, manifests, ns, "iris-api", "default")  # the same again: nothing changes
    assert again == {"created": [], "changed": [], "unchanged": names, "deleted": []}
    assert kube.versions(ns) == rv
    bert_name = [m for m in manifests if m["kind"] == "Deployment"][1]["metadata"]["name"]
    bert = kube.get("Deployment", ns, bert_name)["spec"]["template"]["spec"]
    assert bert["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert bert["imagePullSecrets"] == [{"name": "regcred"}]
    without_hpa = [m for m in manifests if m["kind"] != "HorizontalPodAutoscaler"]  # the autoscaler turned off
    pruned = k8s.apply_stage(api, without_hpa, ns, "iris-api", "default")
    assert pruned["deleted"] == [n for n in names if n.startswith("HorizontalPodAutoscaler/")]
    gone = k8s.delete_stage(api, ns, "iris-api", "default")
    assert sorted(gone) == sorted(n for n in names if not n.startswith("HorizontalPodAutoscaler/"))
    assert kube.made(ns) == []


def test_the_hpa_keeps_the_replicas_it_scaled_to_across_stage_updates(view, kube):
    """The issue's bug: replacing the whole Deployment with `replicas: pods` undid the HPA at every stage
    update. With server-side apply the HPA's manager owns `spec.replicas` once it scales."""
    import copy

    kube, api, ns = kube
    manifests = k8s.render_stage(view, "default", namespace=ns)
    k8s.apply_stage(api, manifests, ns, "iris-api", "default")
    name = manifests[0]["metadata"]["name"]
    deployment = kube.get("Deployment", ns, name)
    assert deployment["spec"]["replicas"] == 2  # created at its pods, not at 1
    assert kube.owner_of("Deployment", ns, name, "spec", "replicas") == [k8s.HANDOVER_MANAGER]
    # the HPA scales up, as its controller does: an update of the scale subresource under its own manager
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale?fieldManager=horizontal-pod-autoscaler"
    scale = kube.request("GET", path.split("?")[0])[1]
    code, doc = kube.request("PUT", path, {**scale, "spec": {"replicas": 5}})
    assert code == 200, doc
    assert kube.owner_of("Deployment", ns, name, "spec", "replicas") == ["horizontal-pod-autoscaler"]
    updated = copy.deepcopy(manifests)
    updated[0]["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "NEW", "value": "1"})
    result = k8s.apply_stage(api, updated, ns, "iris-api", "default")
    assert result["changed"] == [f"Deployment/{name}"]
    deployment = kube.get("Deployment", ns, name)
    assert deployment["spec"]["replicas"] == 5, "a stage update kept what the HPA scaled to"
    assert {"name": "NEW", "value": "1"} in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert kube.owner_of("Deployment", ns, name, "spec", "replicas") == ["horizontal-pod-autoscaler"]
    # the autoscaler turned off: mlyard owns the count again and sets it to the resource's pods
    k8s.apply_stage(api, [m for m in manifests if m["kind"] != "HorizontalPodAutoscaler"], ns, "iris-api",
                    "default")
    assert kube.get("Deployment", ns, name)["spec"]["replicas"] == 2
    assert kube.owner_of("Deployment", ns, name, "spec", "replicas") == ["mlyard"]
