"""A RAG's query service on this machine (on a cluster: tasks/rag_cluster.py): the replicas the supervisor runs (mlyard.serving.rag and, when the
RAG has no LLM of its own, its SmolLM2 or its model, in a sandbox) and the gateway routes, as the replica group `rag:NAME`
(tasks/replicas.py); where its request log is; which of its replicas answers now. Light on purpose:
the CLI's reads import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlyard.core.specs.rag import RagSpec


def query_log(home: Any, name: str) -> Any:
    """Where a RAG's query service writes a record of every request (serving/inference_log.py)."""
    return Path(home) / "rags" / "logs" / f"{name}.jsonl"


def llm_endpoint(name: str) -> str:
    """The replica group of a RAG: its query service (stage `query`) and its own LLM (stage `llm`)."""
    return f"rag:{name}"


def healthy_replica(home: Any, name: str, stage: str) -> str | None:
    """The URL of a replica of the RAG `name` in `stage` (query, llm) that answers its health check now."""
    found = healthy_member(home, name, stage)
    return found[0] if found else None


def healthy_member(home: Any, name: str, stage: str) -> tuple[str, str] | None:
    """(URL, key) of a replica of the RAG `name` in `stage` that answers its health check now: the key names
    its own credential (core/connection.replica_key_headers), which its LLM, in a sandbox, asks for."""
    from mlyard.tasks import replicas as files

    states = files.states(home)
    for w in files.of_stage(home, llm_endpoint(name), stage):
        st = states.get(w.key)
        if st is not None and st.status == "RUNNING" and files.probe(st.url + w.health_path, 1.0) == 200:
            return st.url, w.key
    return None


def service_url(home: Any, name: str) -> str | None:
    """The base URL (…/v1) of a healthy query replica of the RAG `name` on this machine, or None."""
    url = healthy_replica(home, name, "query")
    return url + "/v1" if url else None


def want_query_service(home: Path, rag_id: int, spec: RagSpec) -> None:
    """Ask for the RAG's query service (spec.instance_count replicas of mlyard.serving.rag, routed by the
    gateway once healthy) and, when it has no LLM of its own, its SmolLM2 (llm.instance_count replicas
    of `mlyard serve --chat-model`)."""
    import sys

    from mlyard.core.settings import in_kubernetes_pod
    from mlyard.tasks import replicas as files

    if in_kubernetes_pod():  # a cluster's API: the RAG's ingestion run applies its objects (tasks/rag_cluster.py)
        return
    group = llm_endpoint(spec.name)
    env = {"MLYARD_HOME": str(home)}
    for i in range(spec.instance_count):
        files.want(home, files.Wanted(files.key_of(group, "query", rag_id, i), group, "query", rag_id, i, "rag",
                                      [sys.executable, "-m", "mlyard.serving.rag", "--rag", spec.name], env, routed=True,
                                      health_path="/health"))
    if not (spec.llm.endpoint or spec.llm.base_url):
        # a model is code and data a member brought: its replica runs in a sandbox (tasks/sandbox.py) that reads
        # its file or folder (SmolLM2 is the platform's own, read with its packages), with a credential of its own
        folder = spec.llm.model_folder()
        reads = [str(Path(folder).resolve())] if folder and Path(folder).exists() else []
        mlyard_bin = str(Path(sys.executable).parent / "mlyard")
        for i in range(spec.llm.instance_count):
            files.want(home, files.Wanted(files.key_of(group, "llm", rag_id, i), group, "llm", rag_id, i,
                                          spec.llm.model, [mlyard_bin, "serve", "--chat-model", spec.llm.model], env,
                                          reads=reads))


def unwant_query_service(home: Path, name: str, rag_id: int | None = None) -> None:
    """Stop asking for a RAG's query service and its LLM (the supervisor ends their replicas); on a cluster, queue
    the run that deletes its objects (the RAG `rag_id`'s: the API may not delete a Deployment)."""
    from mlyard.core.settings import in_kubernetes_pod
    from mlyard.tasks import replicas as files

    if in_kubernetes_pod():
        if rag_id is not None:
            from mlyard.core.names import FLOW_RAG_SYNC, deployment
            from mlyard.tasks.orchestration import submit

            submit(deployment(FLOW_RAG_SYNC), {"spec": {"rag": name, "withdraw": rag_id}}, None,
                   [f"mlyard.rag:{name}"])
        return

    for w in files.wanted(home):
        if w.endpoint == llm_endpoint(name):
            files.unwant(home, w.key)


def query_service_status(home: Path, name: str, recorded: str = "") -> str:
    """The query route's deploy state, from its replicas: COMPLETE once every one answers its health
    check, FAILURE when one keeps exiting (3 restarts and not answering), DEPLOYING until then. On a cluster,
    what its ingestion run `recorded` (tasks/rag_cluster.route)."""
    from mlyard.core.settings import in_kubernetes_pod
    from mlyard.tasks import replicas as files

    if in_kubernetes_pod():
        return recorded or "DEPLOYING"

    members = [w for w in files.wanted(home) if w.endpoint == llm_endpoint(name)]
    if not members:
        return "FAILURE"
    states = files.states(home)
    status = "COMPLETE"
    for w in members:
        st = states.get(w.key)
        if st is not None and st.status == "RUNNING" and files.probe(st.url + w.health_path, 1.0) == 200:
            continue
        if st is not None and st.restarts >= 3:
            return "FAILURE"
        status = "DEPLOYING"
    return status


def cluster_records(name: str, tail: int) -> list[dict[str, Any]] | None:
    """On a cluster, the last `tail` records of the RAG's request log, oldest first: what its query service's pods
    printed (tasks/logpods.py, through `pods/log`, while they exist). None elsewhere (the file `query_log` names)."""
    from mlyard.core.settings import Settings, in_kubernetes_pod

    if not in_kubernetes_pod():
        return None
    from mlyard.tasks.kubernetes import cluster_client
    from mlyard.tasks.logpods import endpoint_records

    return endpoint_records(cluster_client("rag logs", "kubernetes"), Settings().kube_namespace, llm_endpoint(name),
                            tail, selector=f"mlyard.io/rag={name},mlyard.io/part=query", container="server")
