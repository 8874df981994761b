"""The install applied, pruned and removed (`mlyard k8s apply|uninstall`).

`apply` applies each object with server-side apply under the field manager `mlyard`, forcing its own fields,
and says for each whether it was created, changed or left as it was: a second apply of the same values changes
nothing. Two exceptions:
- a Job's pod template cannot be changed: a Job whose template changed (a new image) is replaced instead (and
  so is one that failed, so that an apply after a fix runs it again); `wait_for_job` follows it to its end;
- a workload's replica count that another manager set since (an HPA, `kubectl scale`, an operator) is theirs:
  the apply leaves it as it is and says so (`kept`), where forcing would have reverted it.

The objects an apply made are listed in the ConfigMap `mlyard-install` of the namespace (the inventory, as
kubectl's ApplySet and kapp keep one): `prune` deletes what an earlier apply made and the values no longer
render, and `uninstall` deletes all of it, the cluster-scoped Kueue objects and every project's ClusterQueue
among them, never the Secrets, claims, notebooks or endpoints of the namespace unless asked to delete the
namespace too. Objects a flow made (an endpoint's stage, a notebook) are never in the inventory.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from mlyard.core.errors import StackError
from mlyard.core.names import RELEASE

FIELD_MANAGER = "mlyard"
# what the server keeps for itself: never a change an apply makes
SERVER_OWNED = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid", "selfLink")
TEMPLATE_HASH = "mlyard.io/template-hash"  # on a Job: what its pod template was rendered from
INVENTORY = "mlyard-install"
SCALED = ("Deployment", "StatefulSet")


@dataclass
class Applied:
    kind: str
    name: str
    outcome: str  # created, changed, unchanged, replaced, pruned, deleted
    kept: list[str] = field(default_factory=list)  # what another manager set and the apply left as it was
    fields: list[str] = field(default_factory=list)  # what it changed (dotted paths), at most 20


def resource_of(dyn: Any, obj: dict) -> tuple[Any, str | None]:
    """The API resource of an object and the namespace it lives in (None: cluster-scoped)."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    except ResourceNotFoundError:
        raise StackError(f"the cluster does not serve {obj['apiVersion']} {obj['kind']} (install it first: "
                         f"{'Kueue' if 'kueue' in obj['apiVersion'] else 'the API it belongs to'})") from None
    return resource, (obj["metadata"].get("namespace") if resource.namespaced else None)


def live_of(dyn: Any, resource: Any, name: str, namespace: str | None) -> dict | None:
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        return dyn.get(resource, name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def replicas_kept(obj: dict, live: dict | None) -> tuple[dict, list[str]]:
    """`obj` without its replica count when another manager set the live one to another number since (a
    kubectl scale, an HPA, an operator: each writes `spec.replicas` through the scale subresource or an
    update, and becomes its manager), with what was kept; else `obj` as it is."""
    want = (obj.get("spec") or {}).get("replicas")
    if obj["kind"] not in SCALED or live is None or want is None or live["spec"].get("replicas") == want:
        return obj, []
    others = [m["manager"] for m in live["metadata"].get("managedFields") or []
              if m["manager"] != FIELD_MANAGER and "f:replicas" in ((m.get("fieldsV1") or {}).get("f:spec") or {})]
    if not others:
        return obj, []
    kept = copy.deepcopy(obj)
    del kept["spec"]["replicas"]
    return kept, [f"spec.replicas={live['spec']['replicas']} (set by {', '.join(sorted(set(others)))}; the values "
                  f"say {want}: `kubectl scale` to change it)"]


def apply(objs: list[dict], dyn: Any) -> Iterator[Applied]:
    """Server-side apply of each object under the field manager `mlyard`; what happened to each."""
    from kubernetes.dynamic.exceptions import ApiException

    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        resource, namespace = resource_of(dyn, obj)
        live = live_of(dyn, resource, name, namespace)
        before = live["metadata"]["resourceVersion"] if live else None
        if kind == "Job":  # a new template, or the last run failed (a retry after fixing a Secret): run it anew
            obj = hashed(obj)
            if live is not None and ((live["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) !=
                                     obj["metadata"]["annotations"][TEMPLATE_HASH] or _failed(live)):
                _delete(dyn, resource, name, namespace)
                dyn.server_side_apply(resource, body=obj, namespace=namespace, field_manager=FIELD_MANAGER,
                                      force_conflicts=True)
                yield Applied(kind, name, "replaced")
                continue
        obj, kept = replicas_kept(obj, live)
        try:
            after = dyn.server_side_apply(resource, body=obj, namespace=namespace, field_manager=FIELD_MANAGER,
                                          force_conflicts=True).to_dict()
        except ApiException as exc:
            raise StackError(f"applying {kind} {name} failed: {exc.status} {exc.reason}") from None
        moved = [] if live is None else changed_paths(live, after)  # a controller's status write meanwhile is none
        if live is None or after["metadata"]["resourceVersion"] == before or not moved:
            yield Applied(kind, name, "created" if live is None else "unchanged", kept)
        else:
            yield Applied(kind, name, "changed", kept, moved[:20])


def changed_paths(before: dict, after: dict) -> list[str]:
    """Where an object's spec and metadata differ (dotted paths; a list compared as a whole), its status and
    what the server keeps for itself aside."""
    return _paths(_comparable(before), _comparable(after))


def _comparable(obj: dict) -> dict:
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_OWNED}
    return out


def _paths(a: Any, b: Any, at: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b)) for p in _paths(a.get(k), b.get(k), f"{at}.{k}" if at else k)]
    return [] if a == b else [at]


def _failed(job: dict) -> bool:
    return any(c["type"] == "Failed" and c["status"] == "True" for c in (job.get("status") or {}).get("conditions") or [])


def hashed(job: dict) -> dict:
    import hashlib

    job = copy.deepcopy(job)
    digest = hashlib.sha256(json.dumps(job["spec"], sort_keys=True).encode()).hexdigest()[:16]
    job["metadata"].setdefault("annotations", {})[TEMPLATE_HASH] = digest
    return job


def _delete(dyn: Any, resource: Any, name: str, namespace: str | None, timeout: float = 120) -> None:
    """Delete an object (a Job with its pods), and wait until it is gone (a new one of the same name needs its
    place); a Namespace, whose contents go first, is left going."""
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        dyn.delete(resource, name=name, namespace=namespace, body={"propagationPolicy": "Background"})
    except NotFoundError:
        return
    if resource.kind == "Namespace":
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live_of(dyn, resource, name, namespace) is None:
            return
        time.sleep(0.5)
    where = f"-n {namespace} " if namespace else ""
    raise StackError(f"{resource.kind} {name} was not deleted within {timeout:.0f} s: delete it (kubectl {where}delete "
                     f"{resource.kind.lower()} {name}) and apply again")


def wait_for_job(dyn: Any, namespace: str, name: str, timeout: float) -> tuple[bool, str]:
    """Until the Job has ended: (whether it succeeded, its last pod's log). StackError when it has not ended
    within `timeout` seconds, saying what its pods wait for."""
    from kubernetes import client

    jobs = dyn.resources.get(api_version="batch/v1", kind="Job")
    core = client.CoreV1Api(dyn.client)
    deadline = time.monotonic() + timeout
    while True:
        status = dyn.get(jobs, name=name, namespace=namespace).to_dict().get("status") or {}
        ended = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        pods = sorted(core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items,
                      key=lambda p: p.metadata.creation_timestamp)
        if "Complete" in ended or "Failed" in ended:
            log = core.read_namespaced_pod_log(pods[-1].metadata.name, namespace) if pods else ""
            return "Complete" in ended, log
        if time.monotonic() > deadline:
            waiting = [w.reason for p in pods for cs in (p.status.container_statuses or [])
                       if (w := cs.state.waiting) is not None]
            raise StackError(f"Job {name} has not finished within {timeout:.0f} s ({len(pods)} pod(s)"
                             f"{', waiting: ' + ', '.join(waiting) if waiting else ''}): kubectl -n {namespace} "
                             f"describe job {name}")
        time.sleep(1)


def rollouts(dyn: Any, namespace: str, names: list[str], timeout: float, done: Any) -> list[str]:
    """Until each Deployment named has rolled out, as `kubectl rollout status` judges it (its controller has seen
    its spec; every replica updated and available; none of the old left), `done(name, how)` for each as it does;
    what has not within `timeout` seconds (or has passed its progress deadline), with what its pods wait for."""
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    started, pending, late = time.monotonic(), sorted(names), []
    while pending:
        for name in list(pending):
            d = dyn.get(deployments, name=name, namespace=namespace).to_dict()
            want, st = (d["spec"].get("replicas", 1), d.get("status") or {})
            stuck = any(c.get("reason") == "ProgressDeadlineExceeded" for c in st.get("conditions") or [])
            if st.get("observedGeneration", 0) >= d["metadata"]["generation"] and (st.get("updatedReplicas") or 0) \
                    == want == (st.get("replicas") or 0) and (st.get("availableReplicas") or 0) == want:
                pending.remove(name)
                done(name, f"{want}/{want} in {time.monotonic() - started:.0f} s")
            elif stuck or time.monotonic() - started > timeout:
                pending.remove(name)
                late.append(f"Deployment {name} ({st.get('availableReplicas') or 0} of {want} available"
                            f"{', past its progress deadline' if stuck else ''}{_waiting(dyn, namespace, d)})")
        if pending:
            time.sleep(1)
    return late


def _waiting(dyn: Any, namespace: str, deployment: dict) -> str:
    from kubernetes import client

    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"].get("matchLabels", {}).items())
    reasons = set()
    for pod in client.CoreV1Api(dyn.client).list_namespaced_pod(namespace, label_selector=selector).items:
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            continue  # serving: not what the rollout waits for
        waits = [cs.state.waiting.reason for cs in pod.status.container_statuses or [] if cs.state.waiting]
        unscheduled = [c.message for c in pod.status.conditions or [] if c.type == "PodScheduled" and c.status == "False"]
        if waits:
            reasons.update(waits)
        elif unscheduled:
            reasons.update(f"unscheduled: {m}" for m in unscheduled)
        else:
            reasons.add("not ready" if pod.status.phase == "Running" else str(pod.status.phase))
    return f"; its pods: {', '.join(sorted(r for r in reasons if r))}" if reasons else ""


def ref_of(obj: dict) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "namespace": meta.get("namespace"), "name": meta["name"]}


def inventory(dyn: Any, namespace: str) -> list[dict]:
    """What earlier applies made in this install (refs: apiVersion, kind, namespace, name); [] before the first."""
    live = live_of(dyn, dyn.resources.get(api_version="v1", kind="ConfigMap"), INVENTORY, namespace)
    return json.loads(((live or {}).get("data") or {}).get("objects") or "[]")


def record(dyn: Any, namespace: str, refs: list[dict]) -> None:
    """The inventory as it is after an apply: every object it made, and what it left of earlier ones."""
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": INVENTORY, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "mlyard"}},
            "data": {"objects": json.dumps(refs, indent=0), "release": RELEASE}}
    dyn.server_side_apply(dyn.resources.get(api_version="v1", kind="ConfigMap"), body=body, namespace=namespace,
                          field_manager=FIELD_MANAGER, force_conflicts=True)


def left_over(objs: list[dict], refs: list[dict]) -> list[dict]:
    """The refs of the inventory that `objs` no longer has (a component turned off, an object renamed)."""
    wanted = {(r["kind"], r["namespace"], r["name"]) for r in map(ref_of, objs)}
    return [r for r in refs if (r["kind"], r["namespace"], r["name"]) not in wanted]


def delete(dyn: Any, refs: list[dict], outcome: str = "pruned") -> Iterator[Applied]:
    """Delete each object named, workloads first (their pods go before the accounts and Secrets they use)."""
    order = {"Deployment": 0, "StatefulSet": 0, "Job": 0}
    for ref in sorted(refs, key=lambda r: order.get(r["kind"], 1)):
        resource, namespace = resource_of(dyn, ref | {"metadata": {"name": ref["name"], "namespace": ref["namespace"]}})
        if live_of(dyn, resource, ref["name"], namespace) is not None:
            _delete(dyn, resource, ref["name"], namespace)
            yield Applied(ref["kind"], ref["name"], outcome)


def project_cluster_queues(dyn: Any) -> list[dict]:
    """Every project's ClusterQueue (`mlyard teams queues --apply`), cluster-scoped: a namespace's deletion
    leaves them."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        resource = dyn.resources.get(api_version="kueue.x-k8s.io/v1beta2", kind="ClusterQueue")
    except ResourceNotFoundError:
        return []
    return [{"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "namespace": None, "name": q.metadata.name}
            for q in dyn.get(resource, label_selector="mlyard.project").items]


def left_in(dyn: Any, namespace: str) -> dict[str, int]:
    """What an uninstall keeps of a namespace, by kind: the Secrets and claims (data), and what flows made there
    (endpoint stages' Deployments, notebooks' StatefulSets, runs' Jobs)."""
    from kubernetes.dynamic.exceptions import NotFoundError

    found = {}
    for api_version, kind in (("v1", "Secret"), ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment"),
                              ("apps/v1", "StatefulSet"), ("batch/v1", "Job")):
        try:
            items = dyn.get(dyn.resources.get(api_version=api_version, kind=kind), namespace=namespace).items
        except NotFoundError:  # the namespace itself gone
            return {}
        if items:
            found[kind] = len(items)
    return found
