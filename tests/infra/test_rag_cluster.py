"""A RAG on a cluster (issue 70 §1), on Kubernetes' own control plane (`platform_nodes`: the real Prefect
Kubernetes worker on the cpu pool, the Deployment, ReplicaSet and EndpointSlice controllers, two nodes with a pod
network). Created as the mlyard API's pod creates one (the checks, the record, its ingestion run queued on
`rag-sync-kubernetes`): the run ingests the documents from the cluster's S3 into the cluster's pgvector and applies
the RAG's query service, a Deployment of the platform's image, and routes it before the RAG is ACTIVE. The
install's gateway pods then answer its search and query routes through it; deleting the RAG queues the run that
deletes its objects."""

from __future__ import annotations

import os
import subprocess
import threading

import httpx
import pytest
from kube_cluster import NS
from pod_moves import wait
from pod_network import ServiceProxy

DOCS = {"tokens.md": "# Tokens\n\nAn endpoint token is rotated with `mlyard endpoints tokens issue`; the old one is "
                     "revoked after a grace period of one hour.\n",
        "gpus.md": "# GPUs\n\nThe gpu pool's nodes carry A100 and L4 cards; a training asks for them with gpu_type.\n"}


def _kube_proxy(api, service: str) -> ServiceProxy:
    """kube-proxy for the Service `service` at its cluster IP and port 80 (the address kube_service_url names):
    the address on this machine's `lo`, as a node's rules make a cluster IP reachable."""
    ip = api.get("Service", NS, service)["spec"]["clusterIP"]
    subprocess.run(["ip", "addr", "replace", f"{ip}/32", "dev", "lo"], check=True, capture_output=True)
    return ServiceProxy(api, NS, service, address=(ip, 80))


def _logs(platform_nodes, prefixes: tuple[str, ...]) -> str:
    """What a failed wait shows: the output of the pods whose names start with one of `prefixes`."""
    return "".join(f"\n--- {pod}\n{text[-2500:]}" for node in platform_nodes.nodes
                   for (ns, pod), text in node.api.pod_logs.items() if ns == NS and pod.startswith(prefixes))


def test_a_rags_query_service_runs_on_the_cluster_and_the_gateway_routes_it(platform_nodes, cluster_stores,
                                                                            control_plane, tmp_path, monkeypatch):
    import base64

    import boto3

    import mlyard.rags as rags
    from mlyard.core.connection import replica_token
    from mlyard.core.errors import SpecError
    from mlyard.registry import Catalog
    from mlyard.registry.rags import Rags

    api = platform_nodes.api
    s3 = boto3.client("s3", endpoint_url=cluster_stores.s3_endpoint, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1")
    for name, text in DOCS.items():
        s3.put_object(Bucket="mlyard-cluster", Key=f"handbook/{name}", Body=text.encode())
    # what the install's Secret and ConfigMap hold for RAGs: the vector store, the replicas' credential; no cluster
    # DNS here, so the gateway reaches a Service at its cluster IP
    secret = {"mlyard_vector_store_url": cluster_stores.vector_store_url,
              "mlyard_replica_token": replica_token(cluster_stores.internal_token)}
    code, doc = api.request("PATCH", f"/api/v1/namespaces/{NS}/secrets/mlyard-settings", {"data": {
        k: base64.b64encode(v.encode()).decode() for k, v in secret.items()}}, "application/merge-patch+json")
    assert code == 200, doc
    code, doc = api.request("PATCH", f"/api/v1/namespaces/{NS}/configmaps/mlyard-config", {"data": {
        "MLYARD_KUBE_SERVICE_URL": "http://{cluster_ip}:{port}"}}, "application/merge-patch+json")
    assert code == 200, doc
    platform_nodes.apply("gateway")

    # this process as the API's pod: in a pod (a local deployment is the flow's -kubernetes one), its settings
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("MLYARD_HOME", str(tmp_path / "api-pod"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))  # its account's reach of pods/log, as admin here
    monkeypatch.setenv("MLYARD_VECTOR_STORE_URL", cluster_stores.vector_store_url)
    monkeypatch.setenv("MLYARD_PREFECT_API_URL", os.environ["PREFECT_API_URL"])  # the cluster's Prefect
    monkeypatch.setenv("MLYARD_GATEWAY_URL", f"http://{platform_nodes.gateway.address[0]}:"
                                             f"{platform_nodes.gateway.address[1]}")
    with pytest.raises(SpecError, match=r"llm\.model.*llm\.endpoint"):  # refused before anything is recorded
        rags.create({"name": "folder", "path": "s3://mlyard-cluster/handbook/", "llm": {"model": "s3://x/model"}})

    proxies: list[ServiceProxy] = []
    done = threading.Event()

    def follow() -> None:  # the run makes the query Service; kube-proxy follows it, as on a node
        while not done.wait(0.2):
            for svc in api.items("Service", NS):
                if svc["metadata"].get("labels", {}).get("mlyard.io/rag") == "handbook":
                    proxies.append(_kube_proxy(api, svc["metadata"]["name"]))
                    return

    threading.Thread(target=follow, daemon=True).start()
    catalog = Catalog(cluster_stores.catalog_url)
    try:
        view = rags.create({"name": "handbook", "path": "s3://mlyard-cluster/handbook/"}, wait=True,
                           timeout_seconds=400)
        record = Rags(catalog).get("handbook")
        assert [p.service for p in proxies] == [f"rag-{record.id}"], record
        assert view["status"] == "ACTIVE" and view["deploy_status"] == "COMPLETE", view
        assert record.service_urls and record.service_urls["query"].endswith(":80"), record
        deployment = api.get("Deployment", NS, f"rag-{record.id}")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["containers"][0]["args"][:4] == [
            "python", "-m", "mlyard.serving.rag", "--rag"]
        assert api.get_object("Deployment", NS, f"rag-{record.id}-llm") is None  # SmolLM2's answers: extracted

        gateway = f"http://{platform_nodes.gateway.address[0]}:{platform_nodes.gateway.address[1]}"
        with httpx.Client(timeout=60) as client:
            seen: list = []

            def searched():
                seen.append(r := client.post(f"{gateway}/rag/v1/search", json={
                    "model": "handbook", "query": "How is a token rotated?", "top_k": 1}))
                return r.status_code == 200 and r
            try:
                found = wait(searched, 60, "the gateway routes the RAG's search")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {seen[-1].status_code if seen else None} "
                                     f"{seen[-1].text[:500] if seen else ''}{_logs(platform_nodes, ('gateway', 'rag-'))}") from None
            hit = found.json()["data"][0]
            assert hit["file"] == "tokens.md" and "grace period" in hit["text"], hit
            # a pod of the query service answers only the gateway: called directly, without its credential
            url = record.service_urls["query"]
            assert client.post(f"{url}/v1/search", json={"model": "handbook", "query": "x"}).status_code in (401, 403)
        answer = rags.query("handbook", "How is an endpoint token rotated?")  # as a user asks it, at the gateway
        assert answer["sources"][0]["file"] == "tokens.md" and "revoked" in answer["answer"], answer
        # its request log: what its pods printed, read through pods/log as the API's pod reads it
        said = wait(lambda: (got := rags.logs("handbook", tail=10)) and any(
            "/v1/chat/completions 200" in r["body"] for r in got) and got, 30, "the query's record in the pods' log")
        assert all(r["endpointId"] == "rag:handbook" for r in said) and any("/v1/search 200" in r["body"] for r in said)

        # a sync on the gpu pool (`rag-sync-gpu`) runs as `mlyard-run`, which may not apply these objects: it ingests
        # only, saying so, and leaves the query service as it is
        import kubernetes.client

        from mlyard.core.specs.rag import RagSpec
        from mlyard.tasks import kubernetes as kube
        from mlyard.tasks import rag_cluster

        code, doc = api.request("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/mlyard-run/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
        assert code == 201, doc
        conf = kubernetes.client.Configuration()
        conf.host, conf.ssl_ca_cert = control_plane.url, str(control_plane.ca)
        conf.api_key, conf.api_key_prefix = {"authorization": doc["status"]["token"]}, {"authorization": "Bearer"}
        with monkeypatch.context() as m:
            m.setattr(kube, "cluster_client", lambda *_: kubernetes.client.ApiClient(conf))
            applied, why = rag_cluster.deploy("handbook", record.id, RagSpec.model_validate(record.spec))
        assert applied is None and "rag-sync-kubernetes" in why
        assert api.get("Deployment", NS, f"rag-{record.id}")["metadata"]["uid"] == deployment["metadata"]["uid"]

        from mlyard.flows.rag import RagSyncSpec, rag_sync

        with pytest.raises(ValueError, match="which exists"):  # a live RAG's objects are never withdrawn
            rag_sync(RagSyncSpec(rag="other", withdraw=record.id))
        assert api.get_object("Deployment", NS, f"rag-{record.id}") is not None

        assert rags.delete("handbook") == {"deleted": "handbook"}  # the run that deletes its objects is queued
        wait(lambda: api.get_object("Deployment", NS, f"rag-{record.id}") is None
             and api.get_object("Service", NS, f"rag-{record.id}") is None
             and api.get_object("NetworkPolicy", NS, f"rag-{record.id}") is None, 300,
             "the RAG's objects are deleted with it")
        with httpx.Client(timeout=30) as client:
            gone = wait(lambda: (r := client.post(f"{gateway}/rag/v1/search", json={
                "model": "handbook", "query": "tokens"})).status_code == 404 and r, 30, "the gateway forgets the RAG")
        assert "no RAG 'handbook'" in gone.text
    finally:
        done.set()
        for proxy in proxies:
            proxy.close()
        catalog.dispose()
