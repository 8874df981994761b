"""An endpoint flow's steps: check a stage before any change, start its replicas, wait until they are
healthy, put them into the gateway's routing, drain and stop them, and roll back.

Locally a stage resource's replicas are `mlyard serve` processes that the supervisor of `mlyard up`
runs (tasks/replicas.py); the gateway routes to them once they are marked `routed` and it has reloaded.
On Kubernetes (any instance type other than `local`) a stage resource is a Deployment, a Service and
an HPA (tasks/kubernetes.py), routed through its Service. Arguments are narrow: names, ids, keys.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlyard.errors import AlreadyExists, EndpointNotFound, MlyardError, ModelNotFound, NotFound, SpecError
from mlyard.specs.endpoint import StageSpec
from registry.endpoints import Endpoints, Version
from tasks import replicas as files

LOCAL = "local"
MAX_LOCAL_REPLICAS = 8  # the cap on one machine's replicas per stage (AI Toolkit's maximumInstanceCount)


class RoutingFailed(MlyardError):
    """The gateway did not take a stage's replicas into routing (STAGE DEPLOY FAIL)."""


def mlyard_bin() -> str:
    return str(Path(sys.executable).parent / "mlyard")


@task(name="check-stage", cache_policy=NO_CACHE)
def check_stage(endpoints: Endpoints, models: Any, stage: StageSpec, field: str, endpoint: str | None = None,
                new_endpoint: str | None = None) -> list[Version]:
    """Before any change: the endpoint exists (or its name is free), the stage name is free, every model
    version exists, and the stage fits where it runs. The resolved (name, version) of each resource."""
    if new_endpoint is not None:
        try:
            endpoints.get(new_endpoint)
            raise AlreadyExists("endpoint", new_endpoint)
        except EndpointNotFound:
            pass
    if endpoint is not None:
        view = endpoints.get(endpoint)
        if any(st["name"] == stage.name for st in view["stages"]):
            raise AlreadyExists(f"stage of endpoint {endpoint!r}", stage.name)
    versions: list[Version] = []
    for i, res in enumerate(stage.resources):
        try:
            info = models.resolve(res.model)
        except (ModelNotFound, NotFound) as exc:
            raise SpecError(f"{field}.resources[{i}].model", res.model,
                            f"a registered model version ({exc}); see `mlyard models list`") from None
        versions.append((info.name, info.version))
    if stage.instance_type == LOCAL:
        pods = sum(r.pods for r in stage.resources)
        if pods > MAX_LOCAL_REPLICAS:
            raise SpecError(f"{field}.resources[].pods", pods, f"at most {MAX_LOCAL_REPLICAS} replicas in all on "
                            "one machine (instance_type local)")
    else:
        from tasks.kubernetes import cluster_client

        cluster_client(f"{field}.instance_type", stage.instance_type)  # refuses when no cluster is configured
    return versions


def local_replicas(home: Path, view: dict[str, Any], stage: str, chat: frozenset[str] = frozenset()) -> list[files.Wanted]:
    """The replicas of a stage's resources as the supervisor runs them (not routed yet). The versions in
    `chat` ("name/version": registered with the parameter task=chat) serve OpenAI's routes."""
    st = next(s for s in view["stages"] if s["name"] == stage)
    logs = Path(home) / "endpoints" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = []
    for res in st["resources"]:
        name, version = res["model"].rsplit("/", 1)
        for i in range(res["pods"]):
            key = files.key_of(view["name"], stage, res["id"], i)
            out.append(files.Wanted(
                key=key, endpoint=view["name"], stage=stage, resource_id=res["id"], index=i, model=name,
                argv=[mlyard_bin(), "serve",
                      *(["--chat-model"] if res["model"] in chat else []), f"models:/{name}/{version}",
                      "--host", "127.0.0.1", "--inference-log", str(logs / f"{view['name']}.jsonl")],
                env={"MLYARD_ENDPOINT_ID": str(view["id"]), "MLYARD_ENDPOINT_STAGE_ID": str(st["id"])}))
    return out


def chat_versions(models: Any, view: dict[str, Any], stage: str) -> frozenset[str]:
    """The stage's model versions registered as chat models (parameter task=chat)."""
    st = next(s for s in view["stages"] if s["name"] == stage)
    found = set()
    for res in st["resources"]:
        name, version = res["model"].rsplit("/", 1)
        if models.get_version(name, version).parameters.get("task") == "chat":
            found.add(res["model"])
    return frozenset(found)


# -- Kubernetes: each stage resource a Deployment, a Service and (pod autoscaler on) an HPA ---------------


def namespace() -> str:
    import os

    return os.environ.get("MLYARD_KUBE_NAMESPACE", "mlyard")


@task(name="apply-manifests", cache_policy=NO_CACHE)
def kube_apply(view: dict[str, Any], stage: str, parameters: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Render the stage's manifests from infra/endpoint/, validate them, and make the cluster hold them."""
    import os

    from tasks.kubernetes import DEFAULT_IMAGE, apply_stage, cluster_client, render_stage

    st = next(s for s in view["stages"] if s["name"] == stage)
    api = cluster_client("stage.instance_type", st["instance_type"])
    manifests = render_stage(view, stage, image=os.environ.get("MLYARD_IMAGE", DEFAULT_IMAGE), namespace=namespace(),
                             parameters=parameters)
    apply_stage(api, manifests, namespace(), view["name"], stage)
    return manifests


@task(name="wait-ready", cache_policy=NO_CACHE)
def kube_wait_ready(instance_type: str, manifests: list[dict[str, Any]], timeout: float = 900.0) -> None:
    """Wait until every Deployment has all its pods ready."""
    from kubernetes import client

    from tasks.kubernetes import cluster_client

    apps = client.AppsV1Api(cluster_client("stage.instance_type", instance_type))
    deadline = time.monotonic() + timeout
    for m in (m for m in manifests if m["kind"] == "Deployment"):
        name, want = m["metadata"]["name"], m["spec"].get("replicas", 1)
        while True:
            status = apps.read_namespaced_deployment(name, namespace()).status
            if status is not None and (status.ready_replicas or 0) >= want:
                break
            if time.monotonic() > deadline:
                raise files.ReplicaFailed(f"Deployment {name} has {getattr(status, 'ready_replicas', 0) or 0} of "
                                          f"{want} pods ready after {timeout:.0f} s; see `kubectl -n {namespace()} "
                                          f"describe deployment {name}`")
            time.sleep(2.0)


def kube_replicas(view: dict[str, Any], stage: str, manifests: list[dict[str, Any]]) -> list[files.Wanted]:
    """One routed entry per stage resource: its Service, which spreads requests over the pods."""
    st = next(s for s in view["stages"] if s["name"] == stage)
    services = {m["metadata"]["labels"].get("mlyard.io/resource"): m["metadata"]["name"]
                for m in manifests if m["kind"] == "Service"}
    return [files.Wanted(key=files.key_of(view["name"], stage, r["id"], 0), endpoint=view["name"], stage=stage,
                         resource_id=r["id"], index=0, model=r["model"].rsplit("/", 1)[0], argv=[],
                         url=f"http://{services[str(r['id'])]}.{namespace()}.svc.cluster.local:80")
            for r in st["resources"]]


@task(name="delete-manifests", cache_policy=NO_CACHE)
def kube_delete(endpoint: str, stage: str, instance_type: str) -> list[str]:
    from tasks.kubernetes import cluster_client, delete_stage

    return delete_stage(cluster_client("stage.instance_type", instance_type), namespace(), endpoint, stage)


@task(name="start-replicas", cache_policy=NO_CACHE)
def start_replicas(home: Path, replicas: list[files.Wanted]) -> list[str]:
    for w in replicas:
        files.want(home, w)
    return [w.key for w in replicas]


@task(name="wait-healthy", cache_policy=NO_CACHE)
def wait_healthy(home: Path, keys: list[str], timeout: float = 300.0) -> None:
    files.wait_healthy(home, keys, timeout)


def gateway(url: str, path: str, method: str = "GET", timeout: float = 30.0) -> dict[str, Any]:
    req = urllib.request.Request(url + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except OSError as exc:
        raise RoutingFailed(f"the gateway at {url} did not answer ({exc}); is `mlyard up` running?") from None


@task(name="route", cache_policy=NO_CACHE)
def route(home: Path, gateway_url: str, endpoint: str, stage: str, keys: list[str]) -> None:
    """Put the replicas into routing and check that the gateway routes each one, healthy."""
    files.route(home, keys, True)
    table = gateway(gateway_url, "/mlyard/reload", "POST")
    routed = table["endpoints"].get(endpoint, {}).get("stages", {}).get(stage, [])
    by_key = {r.get("key"): r for r in routed}
    missing = [k for k in keys if k not in by_key or by_key[k].get("status") != "HEALTHY"]
    if missing:
        why = "; ".join(f"{k}: {by_key[k].get('reason') or by_key[k].get('status')}" if k in by_key else f"{k}: not routed"
                        for k in missing)
        raise RoutingFailed(f"the gateway did not take {endpoint}/{stage} into routing ({why})")


@task(name="drain", cache_policy=NO_CACHE)
def drain(gateway_url: str, endpoint: str, stage: str, timeout: float = 60.0) -> int:
    """Wait until no request is outstanding on the stage's replicas (their answers are not cut off);
    the requests still outstanding at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        table = gateway(gateway_url, "/mlyard/routes")
        replicas = table["endpoints"].get(endpoint, {}).get("stages", {}).get(stage, [])
        outstanding = sum(r["outstanding"] for r in replicas)
        if outstanding == 0 or time.monotonic() > deadline:
            return outstanding
        time.sleep(0.05)


@task(name="stop-replicas", cache_policy=NO_CACHE)
def stop_replicas(home: Path, gateway_url: str | None, keys: list[str], wait: bool = True) -> None:
    """Take the replicas out of routing, then stop them (the supervisor ends their processes)."""
    if not keys:
        return
    files.route(home, keys, False)
    if gateway_url is not None:
        try:
            gateway(gateway_url, "/mlyard/reload", "POST")
        except RoutingFailed:
            pass  # no gateway: nothing routes to them
    for key in keys:
        files.unwant(home, key)
    if wait:
        files.wait_stopped(home, keys)


def stage_keys(home: Path, endpoint: str, stage: str) -> list[str]:
    return [w.key for w in files.of_stage(home, endpoint, stage)]


def supervisor_running(home: Path) -> bool:
    """Whether the replica supervisor of `mlyard up` runs for this home."""
    import os

    try:
        state = json.loads((Path(home) / "stack.json").read_text())
        pid = state["pids"]["replicas"]
        os.kill(pid, 0)
        return True
    except (OSError, KeyError, ValueError):
        return False
