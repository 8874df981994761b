"""Why a flow run a worker took has not started: its Kubernetes Job held by Kueue for quota (the Workload's
condition), its pod placed on no node (the scheduler's PodScheduled condition), its image not pulled (the
container's waiting reason). Such a run waits, as a queue does; only a run no worker took is given up.

The Prefect Kubernetes worker names a run's Job in its `infrastructure_pid` ("namespace:job"). The reason is
read with whatever cluster credentials this process has (the scheduler's service account on a cluster, a
kubeconfig elsewhere); none, or a run on a process pool, reads as waiting with no reason given."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("mlyard.waits")


GONE = "gone"  # the Job the run names is no more: nothing holds the run, it is not waiting


def taken(flow_run: Any) -> bool:
    """A Kubernetes worker took the run (PENDING, its Job made): what holds it is the cluster's. A process
    worker's run ("host:pid") starts at once or not at all: never taken so."""
    state = flow_run.state.type.value if flow_run.state is not None else None
    _, _, job = str(flow_run.infrastructure_pid or "").rpartition(":")
    return state == "PENDING" and bool(job) and not job.isdigit()


def job_reason(infrastructure_pid: str, api_client: Any) -> str | None:
    """One line on why the Job `infrastructure_pid` names has no running pod; None when nothing says, GONE
    when the Job is no more."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    namespace, _, name = infrastructure_pid.rpartition(":")
    if not namespace or not name or name.isdigit():  # a process worker's run: "host:pid"
        return None
    try:
        job = client.BatchV1Api(api_client).read_namespaced_job(name, namespace)
        if job.spec.suspend:  # Kueue's webhook suspends a queued Job; its Workload says what it waits for
            workloads = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                "kueue.x-k8s.io", "v1beta2", namespace, "workloads", label_selector=f"kueue.x-k8s.io/job-uid={job.metadata.uid}")
            for workload in workloads.get("items", []):
                for c in (workload.get("status") or {}).get("conditions") or []:
                    if c.get("type") == "QuotaReserved" and c.get("status") == "False" and c.get("message"):
                        return f"queued in Kueue: {c['message']}"
            return "queued in Kueue for its quota"
        pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    except ApiException as exc:
        log.debug("cannot read Job %s: %s", infrastructure_pid, exc.reason)
        return GONE if exc.status == 404 else None
    for pod in pods:
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.message:
                return f"no node for its pod yet: {c.message}"
        for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
            waiting = status.state.waiting if status.state is not None else None
            if waiting is not None and waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
                return f"container {status.name}: {waiting.reason}" + (f" ({waiting.message})" if waiting.message else "")
    return None


class Waits:
    """The reasons runs wait, each said once in the run's log when it changes (so the Prefect UI's run page and
    `mlyard trainings logs` say why a run is PENDING)."""

    def __init__(self, client: Any):
        self.client = client
        self._said: dict[str, str] = {}
        self._api: Any = None

    def _cluster(self) -> Any:
        if self._api is None:
            from mlyard.tasks.kubernetes import cluster_client

            try:
                self._api = cluster_client("kube", "cluster")
            except Exception:  # noqa: BLE001 - no cluster configured: reasons go unsaid
                self._api = False
        return self._api

    def say(self, flow_run: Any) -> str | None:
        """Why `flow_run` (taken) waits, logged to it when new; the reason, None, or GONE (its Job is no more)."""
        api = self._cluster()
        reason = job_reason(str(flow_run.infrastructure_pid), api) if api else None
        key = str(flow_run.id)
        if len(self._said) > 10000:  # runs long started or ended: forgotten, at worst said once more
            self._said.clear()
        if reason and reason != GONE and self._said.get(key) != reason:
            from datetime import datetime, timezone

            from prefect.client.schemas.actions import LogCreate

            self._said[key] = reason
            self.client.create_logs([LogCreate(name="mlyard.waits", level=logging.INFO, flow_run_id=flow_run.id,
                                               message=f"waiting to start: {reason}",
                                               timestamp=datetime.now(timezone.utc))])
        return reason
