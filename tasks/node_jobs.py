"""A multi-node training on a Kubernetes pool: its flow run's pod (the coordinator) makes an Indexed Job
of `nodes` pods and a headless Service through which they meet at pod 0, follows them, and ends with
their end (issue 26 §2; DESIGN §14).

- The node pods are the coordinator's own pod (image, settings ConfigMap and Secret, volumes, service
  account, pull Secrets, security context: what the pool made) with the spec's `resources` (GPUs, GPU
  type, CPU, memory, data storage), running `python -m mlyard.tasks.node` (tasks/node.py).
- Each pod gets its index from the Job controller (`JOB_COMPLETION_INDEX`); `pod-i.service` names
  resolve through the headless Service (`subdomain`), before the pods are ready
  (`publishNotReadyAddresses`), so node 0's torchrun c10d store (port 29400) and TensorFlow's workers
  (port 2222) are reachable as the pods start.
- `backoffLimit: 0`: one node failing fails the Job (its other pods are ended). With the spec's
  `max_restarts`, the failed Job is deleted and all the nodes start again as a new Job (`<name>-r<k>`),
  as JobSet's failurePolicy restarts a gang; past the limit, or without one, the training fails with
  that node's last lines. A stop seen by the flow run deletes the Job with its pods; the Job is
  also owned by the coordinator's pod, so when the pool's worker ends that pod (a cancel from the UI)
  the nodes go with it. The Service is owned by the Job (the Job's TTL, a day after it ends).

Rendering and the node's environment are plain functions (`render`, `node_environment`); `follow`
talks to the cluster through the `kubernetes` client.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlyard.core.environment import pod_name
from mlyard.core.errors import TrainingFailed, TrainingStopped
from mlyard.core.names import TASK_RUN_ENTRY_POINT
from mlyard.core.settings import Settings
from mlyard.core.specs import TrainingSpec
from mlyard.core.specs.training import COORDINATOR, RUN_ACCOUNT
from mlyard.registry.tracking import Tracking
from mlyard.tasks.launch import ScriptRun
from mlyard.tasks.orchestration import KUEUE_QUEUE_LABEL, step_started

RENDEZVOUS_PORT = 29400  # torchrun's c10d store, on node 0
MASTER_PORT = 29500  # MASTER_PORT for code that reads it (torch.distributed's env:// init)
TF_PORT = 2222  # each TensorFlow worker's gRPC server
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
LABEL = "mlyard.io/training"
TTL_SECONDS = 86_400
TAIL_LINES = 20


@dataclass(frozen=True)
class NodeJob:
    name: str  # the Job's and the headless Service's name; pod i is `name-i`
    namespace: str
    nodes: int

    def host(self, index: int) -> str:
        return f"{self.name}-{index}.{self.name}"


def job_name(training_id: str, restart: int = 0) -> str:
    """A DNS-1123 label for a training's node Job (of its `restart`-th restart): short enough that
    `name-31` stays a valid hostname."""
    name = "mlyard-nodes-" + re.sub(r"[^a-z0-9]", "", training_id.lower())[:12]
    return f"{name}-r{restart}" if restart else name


def node_environment(spec: TrainingSpec, job: NodeJob, index: int) -> dict[str, str]:
    """What node `index` is told about the others (each pod computes its own from JOB_COMPLETION_INDEX):
    MASTER_ADDR/PORT, NODE_RANK, NNODES and TensorFlow's TF_CONFIG with every worker's address and its
    own index; torchrun is given node 0's rendezvous (tasks/node.py)."""
    env = {"NODE_RANK": str(index), "NNODES": str(job.nodes), "MASTER_ADDR": job.host(0),
           "MASTER_PORT": str(MASTER_PORT),
           "TF_CONFIG": json.dumps({"cluster": {"worker": [f"{job.host(i)}:{TF_PORT}" for i in range(job.nodes)]},
                                    "task": {"type": "worker", "index": index}})}
    if not spec.torchrun:  # one process per node: its rank is the node's (torchrun gives each process its own)
        env.update({"RANK": str(index), "WORLD_SIZE": str(job.nodes)})
    return env


def render(spec: TrainingSpec, coordinator_pod: dict[str, Any], job: NodeJob, training_id: str,
           run_id: str, queue: str | None = None) -> list[dict[str, Any]]:
    """The headless Service and the Indexed Job of a training's nodes, from the coordinator's pod. With a
    Kueue `queue`, the Job carries its label: Kueue admits its whole parallelism (every node's GPUs) at once
    or not at all, against the same quota as the pool's Jobs, instead of its pods bypassing it."""
    labels = {"app.kubernetes.io/name": "mlyard-training-node", "app.kubernetes.io/managed-by": "mlyard",
              LABEL: job.name}
    pod = copy.deepcopy(coordinator_pod.get("spec") or {})
    for transient in ("nodeName", "hostname", "subdomain", "completions", "parallelism"):
        pod.pop(transient, None)
    pod["restartPolicy"] = "Never"
    pod["subdomain"] = job.name
    pod["serviceAccountName"] = RUN_ACCOUNT  # the user's script: none of the coordinator's right to make Jobs
    # the service account token volume admission added to the coordinator: it adds the nodes' own
    pod["volumes"] = [v for v in pod.get("volumes") or [] if not v["name"].startswith("kube-api-access-")]
    container = pod["containers"][0]
    container["volumeMounts"] = [m for m in container.get("volumeMounts") or []
                                 if not m["name"].startswith("kube-api-access-")]
    container["name"] = "node"
    container["command"] = ["python", "-m", "mlyard.tasks.node"]
    container.pop("args", None)
    kept = [e for e in container.get("env") or [] if not e["name"].startswith(("PREFECT__FLOW_RUN", "MLYARD_NODE_"))]
    container["env"] = kept + [
        {"name": "MLYARD_NODE_SPEC", "value": spec.model_dump_json()},
        {"name": "MLYARD_NODE_JOB", "value": json.dumps({"name": job.name, "nodes": job.nodes})},
        {"name": "MLYARD_NODE_TRAINING_ID", "value": training_id},
        {"name": "MLYARD_NODE_RUN_ID", "value": run_id}]
    container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
                          {"name": "master", "containerPort": MASTER_PORT},
                          {"name": "tf-worker", "containerPort": TF_PORT}]
    r = spec.resources
    quantities: dict[str, Any] = {}
    if r.cpu:
        quantities["cpu"] = f"{r.cpu:g}"
    if r.memory:
        quantities["memory"] = r.memory
    limits = {**quantities, **({"nvidia.com/gpu": r.gpu_count} if r.gpu_count else {})}
    # what the user's script uses: the pod's code host where it has one (tasks/code_host.py), its GPUs with it
    runs_code = next((c for c in pod.get("initContainers") or [] if c["name"] == "code-host"), container)
    runs_code["resources"] = {k: v for k, v in (("requests", quantities), ("limits", limits)) if v}
    selector = {k: v for k, v in (pod.get("nodeSelector") or {}).items() if k != "nvidia.com/gpu.product"}
    if r.gpu_type:
        selector["nvidia.com/gpu.product"] = r.gpu_type
    pod["nodeSelector"] = selector
    if not pod["nodeSelector"]:
        del pod["nodeSelector"]
    if r.gpu_count and not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations") or []):
        pod["tolerations"] = [*(pod.get("tolerations") or []),
                              {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for volume in pod.get("volumes") or []:
        if volume["name"] == "data" and r.data_storage and "ephemeral" in volume:
            volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] = r.data_storage
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": job.name, "namespace": job.namespace, "labels": labels},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {LABEL: job.name},
                        "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT},
                                  {"name": "master", "port": MASTER_PORT}, {"name": "tf-worker", "port": TF_PORT}]}}
    batch = {"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": job.name, "namespace": job.namespace,
                          "labels": {**labels, **({KUEUE_QUEUE_LABEL: queue} if queue else {})}},
             "spec": {"completionMode": "Indexed", "completions": job.nodes, "parallelism": job.nodes,
                      "backoffLimit": 0, "ttlSecondsAfterFinished": TTL_SECONDS,
                      "template": {"metadata": {"labels": labels}, "spec": pod}}}
    return [service, batch]


def coordinator_pod(core: Any, namespace: str, pod_name: str) -> dict[str, Any]:
    """This flow run's own pod, as the API has it."""
    return core.api_client.sanitize_for_serialization(core.read_namespaced_pod(pod_name, namespace))


def create(api_client: Any, objects: list[dict[str, Any]], owner: dict[str, Any]) -> dict[str, Any]:
    """Create the Job, owned by `owner` (the coordinator's pod: when the pool's worker deletes it, on a
    cancel from the UI, the nodes go with it), then the Service, owned by the Job. Returns the Job."""
    from kubernetes import client

    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    service, job = objects
    ns = job["metadata"]["namespace"]
    job["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": owner["metadata"]["name"],
                                           "uid": owner["metadata"]["uid"]}]
    made = api_client.sanitize_for_serialization(batch.create_namespaced_job(ns, job))
    service["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": made["metadata"]["name"],
                                               "uid": made["metadata"]["uid"]}]
    core.create_namespaced_service(ns, service)
    return made


@dataclass
class NodesEnded:
    seconds: float


def follow(api_client: Any, job: NodeJob, should_stop: Callable[[], str | None], on_line: Callable[[str], None],
           poll_seconds: float = 1.0) -> NodesEnded:
    """Follow the nodes' Job to its end: node 0's log lines go to `on_line` as they come; a failed
    node raises TrainingFailed with its index, exit code and last lines; a stop deletes the Job (its
    pods end) and raises TrainingStopped."""
    from kubernetes import client

    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    start, relay = time.monotonic(), None
    while True:
        reason = should_stop()
        if reason:
            delete(api_client, job)
            raise TrainingStopped(reason)
        # the Role grants jobs, not jobs/status; a Job read before its controller first wrote it has no status
        status = batch.read_namespaced_job(job.name, job.namespace).status or client.V1JobStatus()
        pods = core.list_namespaced_pod(job.namespace, label_selector=f"{LABEL}={job.name}").items
        lead = next((p for p in pods if _index(p) == 0), None)
        if relay is None and lead is not None and (lead.status.phase or "Pending") != "Pending":
            relay = LogRelay(core, lead.metadata.name, job.namespace, on_line)
        failed = sorted((p for p in pods if p.status.phase == "Failed"), key=_first_failure)
        if failed or (status.failed or 0) > 0:
            if not failed:  # the Job counted it before we saw the pod: look again
                time.sleep(poll_seconds)
                continue
            first = failed[0]  # the Job failed with it (backoffLimit 0) and ended its other pods; it stays
            code = _exit_code(first)  # for `kubectl describe` until its TTL
            tail = _log(core, first, TAIL_LINES).splitlines()
            what = f"exit code {code}" if code is not None else "pod failed"
            raise TrainingFailed(f"the entry point failed (node {_index(first)} of {job.nodes}: {what})", code,
                                 [f"[node {_index(first)}] {line}" for line in tail])
        if (status.succeeded or 0) >= job.nodes:
            if relay is None and lead is not None:  # it ended between two looks: its whole log at once
                relay = LogRelay(core, lead.metadata.name, job.namespace, on_line)
            if relay is not None:
                relay.join(timeout=30)  # node 0 ended: its log stream ends with its last lines
            return NodesEnded(time.monotonic() - start)
        time.sleep(poll_seconds)


def delete(api_client: Any, job: NodeJob) -> None:
    """Delete the Job and its pods (foreground: the pods are ended first) and the Service."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    for call in (lambda: client.BatchV1Api(api_client).delete_namespaced_job(
                     job.name, job.namespace, propagation_policy="Foreground"),
                 lambda: client.CoreV1Api(api_client).delete_namespaced_service(job.name, job.namespace)):
        try:
            call()
        except ApiException as exc:
            if exc.status != 404:
                raise


def _index(pod: Any) -> int:
    return int((pod.metadata.annotations or {}).get(INDEX_ANNOTATION, "-1"))


def _first_failure(pod: Any) -> tuple:
    """Order failed pods by when they ended, those the Job ended (SIGTERM/SIGKILL: 143/137) last."""
    finished = next((st.state.terminated.finished_at for st in pod.status.container_statuses or []
                     if st.state and st.state.terminated and st.state.terminated.finished_at), None)
    return (_exit_code(pod) in (137, 143), finished.timestamp() if finished else float("inf"), _index(pod))


def _exit_code(pod: Any) -> int | None:
    for st in pod.status.container_statuses or []:
        if st.state and st.state.terminated:
            return st.state.terminated.exit_code
    return None


def _log(core: Any, pod: Any, tail: int | None = None) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace,
                                            **({"tail_lines": tail} if tail else {})) or ""
    except ApiException:
        return ""


class LogRelay(threading.Thread):
    """Node 0's log, followed as `kubectl logs -f` does (one stream the API server ends when the container
    does), each line to `on_line` once. A stream cut while the pod still runs is opened again, skipping
    the lines already relayed."""

    def __init__(self, core: Any, pod: str, namespace: str, on_line: Callable[[str], None]):
        super().__init__(name=f"log-{pod}", daemon=True)
        self.core, self.pod, self.namespace, self.on_line = core, pod, namespace, on_line
        self.shown = 0
        self.start()

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for _ in range(20):  # reconnections, not lines
            seen, pending = 0, b""
            try:
                resp = self.core.read_namespaced_pod_log(self.pod, self.namespace, follow=True, _preload_content=False)
                for chunk in resp.stream(65536):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        seen += 1
                        if seen > self.shown:
                            self.on_line(line.decode(errors="replace").rstrip("\r"))
                            self.shown = seen
            except Exception:  # noqa: BLE001 - the pod is gone, or the stream broke (urllib3's ProtocolError is
                pass  # no OSError, and a thread that died of it would drop the rest of the log): look at the pod
            try:
                phase = self.core.read_namespaced_pod(self.pod, self.namespace).status.phase
            except (ApiException, OSError, ValueError):
                phase = "Gone"
            if phase in ("Succeeded", "Failed", "Gone"):
                if pending and seen + 1 > self.shown:  # its last line, without a newline
                    self.on_line(pending.decode(errors="replace").rstrip("\r"))
                    self.shown = seen + 1
                return
            time.sleep(1.0)


@task(name=TASK_RUN_ENTRY_POINT, cache_policy=NO_CACHE)
def run_nodes(spec: TrainingSpec, training_id: str, run_id: str, tracking: Tracking, namespace: str,
              should_stop: Callable[[], str | None]) -> ScriptRun:
    """The entry point on `spec.nodes` pods (the task whose start makes a training RUNNING): make the
    nodes' Job and Service from this flow run's pod, follow them to their end, and read back from the
    MLflow run what node 0 logged there."""
    step_started(TASK_RUN_ENTRY_POINT)

    from kubernetes import client

    from mlyard.tasks.kubernetes import cluster_client

    logger = get_run_logger()
    api = cluster_client("nodes", spec.nodes)
    own = coordinator_pod(client.CoreV1Api(api), namespace, pod_name() or "")
    queue, start = Settings().kueue_queue, time.monotonic()
    for restart in range(spec.max_restarts + 1):
        job = NodeJob(job_name(training_id, restart), namespace, spec.nodes)
        try:
            create(api, render(spec, own, job, training_id, run_id, queue), owner=own)
        except client.ApiException as exc:
            if exc.status != 403:
                raise
            # a run without mlyard's job variables (the Prefect UI's Run button): the pool's account may make no Job
            raise TrainingFailed(f"this flow run's service account ({own['spec'].get('serviceAccountName')}) may "
                                 f"not make the nodes' Job: run a {spec.nodes}-node training with the job variable "
                                 f"service_account_name: {COORDINATOR['service_account_name']} (mlyard train and "
                                 "Python set it)") from None
        logger.info("%d nodes: Indexed Job %s and headless Service %s in namespace %s; node 0's log follows",
                    spec.nodes, job.name, job.name, namespace)
        try:
            follow(api, job, should_stop, logger.info if spec.collect_logs else (lambda line: None))
        except TrainingFailed as failed:
            if restart == spec.max_restarts:
                if restart:  # the limit is part of the reason
                    raise TrainingFailed(f"{failed.reason}, after {restart} restart(s) of all {spec.nodes} nodes "
                                         f"(max_restarts {spec.max_restarts})", failed.exit_code,
                                         failed.last_lines) from None
                raise
            logger.warning("%s; restarting all %d nodes (restart %d of %d); its last lines:\n%s", failed.reason,
                           spec.nodes, restart + 1, spec.max_restarts, "\n".join(failed.last_lines))
            delete(api, job)  # its pods end first; the failed Job goes (the next one is a new gang for Kueue)
            continue
        break
    return ScriptRun(time.monotonic() - start, tracking.get_run(run_id).metrics, [])


def model_uri(tracking: Tracking, run_id: str) -> str | None:
    """The model node 0 saved in the MLflow run (None when its EM_MODEL_DIR was empty)."""
    artifacts = tracking.client.list_artifacts(run_id, "model")
    return f"{tracking.get_run(run_id).artifact_uri.rstrip('/')}/model" if artifacts else None


def end_nodes(flow, flow_run, state) -> None:
    """An on_cancellation (and on_crashed) hook of the training flow: a multi-node training cancelled while
    Prefect's engine ends its flow run in the pod (before `follow` sees the stop) deletes its nodes' Job
    and Service, so no node trains on for nobody."""
    from mlyard.core.settings import Settings, in_kubernetes_pod

    spec = (flow_run.parameters or {}).get("spec") or {}
    def field(name: str, default: int) -> int:
        return int(spec.get(name, default) if isinstance(spec, dict) else getattr(spec, name, default))

    nodes = field("nodes", 1)
    if nodes < 2 or not in_kubernetes_pod():
        return
    from mlyard.tasks.kubernetes import cluster_client

    api, namespace = cluster_client("nodes", nodes), Settings().kube_namespace
    for restart in range(field("max_restarts", 0) + 1):  # whichever start was running (the others are gone: 404)
        delete(api, NodeJob(job_name(str(flow_run.id), restart), namespace, nodes))
