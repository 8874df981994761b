"""On a cluster, `mlyard logs` finds the records the platform's pods print: a flow run's pod prints its
records as JSON lines on its standard output (tasks/logrecords.py), which kubelet keeps as the pod's log.
The mlyard API reads them through the Kubernetes API (`pods/log`, as `kubectl logs` does) and appends each
pod's new record lines to a file of its own under the index's folder, `<home>/logs/records/pods/`, which
the index (tasks/logstore.py) reads as it reads a flow run's files on one machine: the same filters, the
same ids, the same projects.

Read: the pods of flow runs (their label `prefect.io/flow-run-id`), their main container only (a run's user
code runs in its code host, whose output is never taken for records). Each record is pinned to its pod's
flow run (`flowRunId`), whatever the line says. A pod's log is kept by its node while the pod exists (a
finished run's Job, and so its pod, for `ttlSecondsAfterFinished`: a day as installed); what was read
before it went stays in the index for the settings' log_retention_days. Each replica of the API keeps its
own index, read from the same pods.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

RUN_LABEL = "prefect.io/flow-run-id"
CONTAINER = "prefect-job"  # the pools' job templates name a run's main container so
STATE = ".read.json"  # per pod: the kubelet timestamp of the last line read; the ended pods read to their end
ENDED = ("Succeeded", "Failed")


def folder(home: Path) -> Path:
    return Path(home) / "logs" / "records" / "pods"


class PodLogs:
    """What the API's pods read of the runs' pods' logs: `gather()` once per catch-up."""

    def __init__(self, home: Path, api_client: Any, namespace: str):
        self.dir, self.api_client, self.namespace = folder(home), api_client, namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        try:
            state = orjson.loads((self.dir / STATE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            state = {}
        self.read: dict[str, str] = state.get("read", {})
        self.done: set[str] = set(state.get("done", []))  # ended, and read after they ended: never again

    def gather(self) -> int:
        """Append every run pod's record lines printed since the last look to its file; how many."""
        import kubernetes.client

        core = kubernetes.client.CoreV1Api(self.api_client)
        pods = core.list_namespaced_pod(self.namespace, label_selector=RUN_LABEL).items
        added, alive = 0, set()
        for pod in pods:
            name, run = pod.metadata.name, (pod.metadata.labels or {}).get(RUN_LABEL)
            alive.add(name)
            phase = pod.status.phase if pod.status else None
            if not run or phase in (None, "Pending") or name in self.done:
                continue
            added += self._gather_pod(core, name, run)
            if phase in ENDED:  # its log is whole: read to its end now
                self.done.add(name)
        for gone in set(self.read) - alive:  # its file stays for the index; only its marks go
            del self.read[gone]
        self.done &= alive
        (self.dir / STATE).write_bytes(orjson.dumps({"read": self.read, "done": sorted(self.done)}))
        return added

    def _gather_pod(self, core: Any, name: str, run: str) -> int:
        from kubernetes.client.exceptions import ApiException

        last = self.read.get(name, "")
        since = None
        if last:  # from a little before the last line read: the lines after it are told by their times
            seen = datetime.strptime(last[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
            since = max(1, int((datetime.now(timezone.utc) - seen).total_seconds()) + 2)
        try:
            text = core.read_namespaced_pod_log(name, self.namespace, container=CONTAINER, timestamps=True,
                                                since_seconds=since, _preload_content=False).data.decode(errors="replace")
        except ApiException as exc:
            if exc.status in (400, 404):  # not started yet, or gone meanwhile
                return 0
            raise
        lines = []
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            if not stamp or (last and _moment(stamp) <= _moment(last)):
                continue
            last = stamp
            if not line.startswith("{"):
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # Prefect's own console lines, a torn line
            if isinstance(doc, dict) and doc.get("category"):
                lines.append(orjson.dumps({**doc, "flowRunId": run}) + b"\n")
        if lines:
            fd = os.open(self.dir / f"{name}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"".join(lines))
            finally:
                os.close(fd)
        if last:
            self.read[name] = last
        return len(lines)


STAGE_LABEL = "mlyard.io/endpoint"  # tasks/kubernetes.py labels an endpoint's stage pods so
STAGE_CONTAINER = "model-server"  # infra/endpoint/deployment.yaml.j2's serving container


def endpoint_records(api_client: Any, namespace: str, endpoint: str, tail: int, selector: str | None = None,
                     container: str = STAGE_CONTAINER) -> list[dict[str, Any]]:
    """`mlyard endpoints logs` on a cluster: the last `tail` inference records of `endpoint`, oldest first, as its
    stage pods print them (`mlyard serve --inference-log -`, a record per request) in their serving container's
    log, read through `pods/log`. What a pod printed goes with it (kubelet keeps a pod's log while it exists).
    A RAG's query service's (`mlyard rags logs`): its pods' `selector`, their `container`, `endpoint` rag:NAME."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    core = kubernetes.client.CoreV1Api(api_client)
    found: list[dict[str, Any]] = []
    for pod in core.list_namespaced_pod(namespace, label_selector=selector or f"{STAGE_LABEL}={endpoint}").items:
        if not pod.status or pod.status.phase in (None, "Pending"):
            continue
        try:  # its last lines: the records among the server's other lines
            text = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=container,
                                                tail_lines=tail * 4 + 100, _preload_content=False).data.decode(
                                                    errors="replace")
        except ApiException as exc:
            if exc.status in (400, 404):
                continue
            raise
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("category") == "mlyard.inference" and doc.get("endpointId") == endpoint:
                found.append(doc)
    return sorted(found, key=lambda d: str(d.get("time")))[-tail:] if tail else []


def _moment(stamp: str) -> tuple[str, int]:
    """kubelet's RFC 3339 time of a line (its fraction's trailing zeros cut) as something that sorts."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return whole, int(fraction.ljust(9, "0") or 0)
