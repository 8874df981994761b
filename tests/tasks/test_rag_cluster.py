"""A RAG's query service as a cluster's objects (tasks/rag_cluster.py), without a cluster: strictly valid, held to
the restricted Pod Security profile, holding of the platform what each part needs, its own LLM only where it
writes answers; and what a cluster cannot run, refused naming the field. The objects applied, routed and
deleted on Kubernetes' own control plane: tests/infra/test_rag_cluster.py."""

from __future__ import annotations

import pytest
from pod_security import violations

from mlyard.core.errors import SpecError
from mlyard.core.specs.rag import RagSpec
from mlyard.tasks import rag_cluster
from mlyard.tasks.kubernetes import validate


def _render(**llm) -> list[dict]:
    spec = RagSpec(name="handbook", path="s3://b/docs/", instance_type="m2.c4m8", instance_count=2, llm=llm)
    return rag_cluster.render("handbook", 7, spec, image="reg/mlyard:1", serving_image="reg/serving:1",
                              namespace="ml", pull_secrets=("regcred",))


def test_the_query_service_is_a_restricted_deployment_holding_its_settings_and_no_account_token():
    manifests = _render()
    validate(manifests)  # the Kubernetes schema, strict
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("Deployment", "rag-7"), ("Service", "rag-7"), ("NetworkPolicy", "rag-7")], "SmolLM2's answers: extracted"
    deployment = manifests[0]
    pod = deployment["spec"]["template"]["spec"]
    assert violations(pod, "restricted") == []
    assert deployment["spec"]["replicas"] == 2 and pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "m2.c4m8"}
    assert pod["automountServiceAccountToken"] is False and pod["imagePullSecrets"] == [{"name": "regcred"}]
    box = pod["containers"][0]
    assert box["image"] == "reg/mlyard:1" and box["args"][:5] == ["python", "-m", "mlyard.serving.rag", "--rag", "handbook"]
    settings = next(v for v in pod["volumes"] if v["name"] == "settings")["secret"]
    assert [i["key"] for i in settings["items"]] == ["mlyard_catalog_url", "mlyard_vector_store_url"]
    assert settings["optional"] is True
    asks_endpoint = _render(endpoint="chat")[0]["spec"]["template"]["spec"]  # it passes the endpoint as the platform
    assert [i["key"] for i in next(v for v in asks_endpoint["volumes"] if v["name"] == "settings")["secret"]["items"]
            ] == ["mlyard_catalog_url", "mlyard_vector_store_url", "mlyard_internal_token"]
    token = next(e for e in box["env"] if e["name"] == "MLYARD_REPLICA_TOKEN")  # it answers the gateway alone
    assert token["valueFrom"]["secretKeyRef"]["key"] == "mlyard_replica_token"
    assert box["resources"]["requests"]["cpu"] and box["readinessProbe"]["httpGet"]["path"] == "/health"
    service = manifests[1]
    assert service["spec"]["selector"] == {"mlyard.io/rag-id": "7", "mlyard.io/part": "query"}


def test_its_own_llm_runs_beside_it_only_when_it_writes_answers_and_holds_nothing_of_the_platform():
    for llm in ({"endpoint": "chat"}, {"base_url": "http://llm.example/v1"}, {"answer": "extract"}, {}):
        assert len(_render(**llm)) == 3, llm
    manifests = _render(answer="generate")
    validate(manifests)
    assert [m["metadata"]["name"] for m in manifests[3:]] == ["rag-7-llm"] * 3
    llm = manifests[3]["spec"]["template"]["spec"]
    assert violations(llm, "restricted") == []
    box = llm["containers"][0]
    assert box["image"] == "reg/serving:1" and box["args"][:4] == ["mlyard", "serve", "--chat-model", "smollm2"]
    assert [v["name"] for v in llm["volumes"]] == ["tmp"], "no settings Secret in the model's pod"
    policy = manifests[5]["spec"]
    assert policy["egress"] == [] and policy["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"mlyard.io/rag-id": "7", "mlyard.io/part": "query"}}}]


def test_a_model_folder_as_its_own_llm_is_refused_on_a_cluster_naming_the_field():
    rag_cluster.refused(RagSpec(name="ok", path="s3://b/docs/"))
    with pytest.raises(SpecError, match=r"llm\.model: .*llm\.endpoint"):
        rag_cluster.refused(RagSpec(name="folder", path="s3://b/docs/", llm={"model": "s3://b/models/qwen"}))
