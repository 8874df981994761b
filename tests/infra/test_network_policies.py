"""The install's NetworkPolicies as a network plugin enforces them (tests/network_policy.py; issue 70 §5): the whole
namespace denied by default; an endpoint stage's and a notebook's pods, which run a member's model or kernel,
reach DNS, the internet and the storage the values name, and never the cluster's API, the metadata address, the
databases or the platform's services (a notebook's kernel: the platform's API, gateway and MLflow too); the
platform's pods reach what they use, less the metadata address; a flow run's pod (the platform's flow code beside
the member's script) and a multi-node training's nodes reach the platform's services the flow code uses, never the
cluster's API (only the runs that apply objects do) or other pods; who may reach whom is as each part needs. The policies are the ones `mlyard k8s render` and the endpoint and notebook flows make; the
control plane's API server takes them (tests/infra/test_k8s_install.py, test_notebook_cluster.py)."""

from __future__ import annotations

import pytest
from network_policy import Network, Pod

NS = "mlyard"
METADATA, API_SERVICE, API_SERVER = "169.254.169.254", "10.96.0.1", "172.18.0.2"
S3, HUGGING_FACE, MINIO = "52.216.8.10", "18.164.174.55", "10.20.0.5"


def _network(storage_cidrs: list[str], **network) -> tuple[Network, dict[str, Pod]]:
    from mlyard.core.specs.cluster import ClusterValues
    from mlyard.core.specs.notebook import NotebookSpec
    from mlyard.core.specs.rag import RagSpec
    from mlyard.tasks import notebook_cluster, rag_cluster
    from mlyard.tasks.cluster import render
    from mlyard.tasks.kubernetes import render_stage

    values = ClusterValues(overlay="dev", namespace=NS, network={"storage_cidrs": storage_cidrs, **network})
    rendered = render(values)
    config = next(o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlyard-config")
    policies = [o for o in rendered if o["kind"] == "NetworkPolicy"]
    view = {"name": "digits", "stages": [{"name": "blue", "instance_type": "local", "resources": [{
        "id": 1, "model": "digits/1", "cpu": 1, "memory": "1Gi", "gpu": 0, "pods": 1, "pod_autoscaler": {},
        "runtime": None}]}], "max_request_bytes": None}
    with pytest.MonkeyPatch.context() as m:  # as the endpoint and notebook flows' pods read the ConfigMap
        m.setenv("MLYARD_NETWORK", config["data"]["MLYARD_NETWORK"])
        policies += [o for o in render_stage(view, "blue", namespace=NS) if o["kind"] == "NetworkPolicy"]
        policies += [o for o in notebook_cluster.render("lab", 3, NotebookSpec(name="lab", instance_type="cpu-1"),
                                                        "lab:1", "t", namespace=NS) if o["kind"] == "NetworkPolicy"]
        own_llm = RagSpec(name="docs", path="s3://b/docs/", llm={"answer": "generate"})  # its SmolLM2 writes
        policies += [o for o in rag_cluster.render("docs", 5, own_llm, image="mlyard:1", serving_image="mlyard:1",
                                                   namespace=NS) if o["kind"] == "NetworkPolicy"]
    pods = {name: Pod(name, NS, labels, ip, ports) for name, labels, ip, ports in (
        ("stage", {"mlyard.io/endpoint": "digits", "mlyard.io/stage": "blue", "mlyard.io/resource": "1",
                   "app.kubernetes.io/name": "mlyard-model-server"}, "10.244.1.10", {"http": 8080}),
        ("notebook", {"app.kubernetes.io/name": "mlyard-notebook", "mlyard.io/notebook": "3"}, "10.244.1.11", {"http": 8888}),
        ("run", {"prefect.io/flow-run-id": "abc", "app.kubernetes.io/name": "train-gpu"}, "10.244.1.12", {}),
        ("applier", {"prefect.io/flow-run-id": "def", "app.kubernetes.io/name": "deploy-endpoint-kubernetes",
                     "mlyard.io/cluster-api": "allowed"}, "10.244.1.21", {}),
        ("node", {"app.kubernetes.io/name": "mlyard-training-node"}, "10.244.1.22", {}),
        ("node-1", {"app.kubernetes.io/name": "mlyard-training-node"}, "10.244.1.23", {}),
        ("api", {"app.kubernetes.io/name": "mlyard-api"}, "10.244.1.13", {}),
        ("gateway", {"app.kubernetes.io/name": "gateway"}, "10.244.1.14", {}),
        ("mlflow", {"app.kubernetes.io/name": "mlflow"}, "10.244.1.15", {}),
        ("prefect", {"app.kubernetes.io/name": "prefect-server"}, "10.244.1.16", {}),
        ("postgres", {"app.kubernetes.io/name": "postgres"}, "10.244.1.17", {}),
        ("stray", {"app": "something-else"}, "10.244.1.18", {}),
        ("rag", {"app.kubernetes.io/name": "mlyard-rag", "mlyard.io/rag-id": "5", "mlyard.io/part": "query"},
         "10.244.1.19", {"http": 8080}),
        ("rag-llm", {"app.kubernetes.io/name": "mlyard-rag-llm", "mlyard.io/rag-id": "5", "mlyard.io/part": "llm"},
         "10.244.1.20", {"http": 8080}))}
    pods["dns"] = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, "10.244.0.2")
    pods["kfp"] = Pod("ml-pipeline", "kubeflow", {"app": "ml-pipeline"}, "10.244.2.5")
    pods["kubeflow-other"] = Pod("minio", "kubeflow", {"app": "minio"}, "10.244.2.6")
    return Network([{**p, "metadata": {**p["metadata"], "namespace": p["metadata"].get("namespace", NS)}}
                    for p in policies], {"kube-system": {}, "kubeflow": {}, NS: {}}), pods


def test_a_members_model_and_kernel_reach_dns_the_internet_and_the_storage_and_nothing_of_the_cluster():
    net, pods = _network(storage_cidrs=[f"{MINIO}/32"])
    for who in ("stage", "notebook"):
        member = pods[who]
        assert net.allows(member, pods["dns"], 53, "UDP") and net.allows(member, pods["dns"], 53, "TCP")
        assert net.allows(member, S3, 443) and net.allows(member, HUGGING_FACE, 443), "the internet, the storage"
        assert net.allows(member, MINIO, 9000), "an in-cluster object store the values name"
        for where, port in ((METADATA, 80), (API_SERVICE, 443), (API_SERVER, 6443), ("10.20.0.6", 6379)):
            assert not net.allows(member, where, port), (who, where)
        for part, port in (("prefect", 4200), ("run", 8080), ("stray", 80)):
            assert not net.allows(member, pods[part], port), (who, part)
        assert not net.allows(member, pods["dns"], 443), "DNS's pods on DNS's port alone"
    notebook, stage = pods["notebook"], pods["stage"]
    for part, port in (("api", 8080), ("gateway", 8080), ("mlflow", 5000)):
        assert net.allows(notebook, pods[part], port), part
    assert not net.allows(notebook, pods["api"], 8081), "the platform's services on the ports a kernel uses"
    assert not net.allows(notebook, pods["postgres"], 5432) and not net.allows(notebook, "10.20.0.6", 5432)
    # a stage's pod fetches its version's files through the model registry: MLflow and the catalog's database
    assert net.allows(stage, pods["mlflow"], 5000) and net.allows(stage, pods["postgres"], 5432)
    assert net.allows(stage, "10.20.0.6", 5432), "an external catalog database, on its port"
    assert not net.allows(stage, pods["api"], 8080) and not net.allows(stage, pods["gateway"], 8080)


def test_the_platform_reaches_what_it_uses_less_the_metadata_address_and_the_rest_is_denied():
    net, pods = _network(storage_cidrs=[])
    assert not net.allows(pods["stage"], MINIO, 9000), "no storage CIDR named: nothing internal"
    for who in ("api", "gateway", "mlflow", "prefect"):
        assert not net.allows(pods[who], METADATA, 80), who
        assert net.allows(pods[who], S3, 443) and net.allows(pods[who], API_SERVER, 6443), who
    assert net.allows(pods["gateway"], pods["stage"], 8080), "the gateway routes to a stage's replicas"
    assert not net.allows(pods["notebook"], pods["stage"], 8080)
    assert net.allows(pods["api"], pods["notebook"], 8888), "the front door reaches a notebook"
    assert not net.allows(pods["stage"], pods["notebook"], 8888)
    assert net.allows(pods["gateway"], S3, 443) and net.allows(Pod("client", "elsewhere", {}, "203.0.113.9"),
                                                                 pods["gateway"], 8080), "the front door is open"
    stray = pods["stray"]  # a pod of the namespace no part names: nothing in or out
    assert not net.allows(stray, S3, 443) and not net.allows(pods["api"], stray, 80)


def test_a_run_reaches_the_services_its_flow_code_uses_and_never_the_cluster_api_unless_it_applies_objects():
    """A run's pod holds the member's script beside the flow code: the platform's services the flow calls (each
    checks a credential the script's container lacks), DNS, the internet, the storage; not the API server, the
    metadata address, another internal address or another pod. The endpoint and notebook flows, a RAG's sync
    and a multi-node training's coordinator (labelled by their job variables) reach the API server's ports."""
    net, pods = _network(storage_cidrs=[f"{MINIO}/32"],
                         run_services=[{"namespace": "kubeflow", "labels": {"app": "ml-pipeline"}, "port": 8888}])
    run, applier = pods["run"], pods["applier"]
    for who in (run, applier, pods["node"]):
        for part, port in (("postgres", 5432), ("prefect", 4200), ("mlflow", 5000), ("api", 8080), ("gateway", 8080)):
            assert net.allows(who, pods[part], port), (who.name, part)
        assert net.allows(who, "10.20.0.6", 5432), "an external catalog database, on its port"
        assert net.allows(who, S3, 443) and net.allows(who, MINIO, 9000) and net.allows(who, pods["dns"], 53, "UDP")
        assert net.allows(who, pods["kfp"], 8888), "a service the values' run_services name"
        assert not net.allows(who, pods["kubeflow-other"], 9000) and not net.allows(who, pods["kfp"], 22)
        for where, port in ((METADATA, 80), ("10.20.0.6", 6379), (API_SERVER, 2379)):
            assert not net.allows(who, where, port), (who.name, where, port)
        for part, port in (("stage", 8080), ("notebook", 8888), ("stray", 80), ("api", 8081), ("rag", 8080)):
            assert not net.allows(who, pods[part], port), (who.name, part)
    for where, port in ((API_SERVICE, 443), (API_SERVER, 6443)):
        assert not net.allows(run, where, port) and not net.allows(pods["node"], where, port), where
        assert net.allows(applier, where, port), where
    assert net.allows(pods["node"], pods["node-1"], 29500) and net.allows(pods["node-1"], pods["node"], 45123)
    assert not net.allows(run, pods["node"], 29500), "a training's ranks reach each other alone"
    for who in ("stage", "notebook"):
        assert not net.allows(pods[who], pods["kfp"], 8888), "run_services are the runs' alone"


def test_a_public_api_server_the_values_name_is_kept_from_every_pod_that_runs_a_members_code():
    """A managed cluster's API endpoint may be a public address (`mlyard k8s apply` reads it into
    network.api_server_cidrs): stages, notebooks, runs and a RAG's services do not reach it; the runs that apply
    objects reach it on its ports alone, and no other address there."""
    public = "35.190.1.20"
    net, pods = _network(storage_cidrs=[], api_server_cidrs=[f"{public}/32", "10.96.0.1/32"], api_server_ports=[443])
    for who in ("stage", "notebook", "run", "node", "rag", "rag-llm"):
        assert not net.allows(pods[who], public, 443), who
        assert not net.allows(pods[who], API_SERVICE, 443), who
    assert net.allows(pods["stage"], S3, 443), "the rest of the internet"
    assert net.allows(pods["applier"], public, 443) and net.allows(pods["applier"], API_SERVICE, 443)
    assert not net.allows(pods["applier"], public, 6443), "the API server's ports alone"
    assert not net.allows(pods["applier"], API_SERVER, 443), "its addresses alone, when the values name them"


def test_a_rags_query_service_is_reached_by_the_gateway_alone_and_its_own_llm_by_it_alone():
    """A RAG's query service (tasks/rag_cluster.py) reads the catalog and its vectors (the database's port), asks
    an endpoint through the gateway or its own LLM; its own LLM, the member-facing model, reaches nothing."""
    net, pods = _network(storage_cidrs=[])
    rag, llm = pods["rag"], pods["rag-llm"]
    assert net.allows(pods["gateway"], rag, 8080), "the gateway routes to it"
    for who in ("run", "applier", "stage", "notebook", "api", "stray"):
        assert not net.allows(pods[who], rag, 8080) and not net.allows(pods[who], llm, 8080), who
    assert net.allows(rag, pods["postgres"], 5432) and net.allows(rag, "10.20.0.6", 5432), "catalog and vectors"
    assert net.allows(rag, pods["gateway"], 8080) and net.allows(rag, llm, 8080), "its LLM: an endpoint, or its own"
    assert net.allows(rag, pods["dns"], 53, "UDP") and net.allows(rag, S3, 443), "a base_url LLM, an embeddings URL"
    for where, port in ((METADATA, 80), (API_SERVICE, 443), (API_SERVER, 6443)):
        assert not net.allows(rag, where, port) and not net.allows(llm, where, port), where
    assert not net.allows(rag, pods["prefect"], 4200) and not net.allows(rag, pods["api"], 8080)
    assert not net.allows(pods["gateway"], llm, 8080), "its own LLM answers its query service alone"
    for where, port in ((S3, 443), (pods["dns"], 53), (pods["postgres"], 5432), (pods["gateway"], 8080)):
        assert not net.allows(llm, where, port, *(("UDP",) if port == 53 else ())), where
