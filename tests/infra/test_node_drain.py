"""A node drained under a progressive promotion (issue 69 §2): the promotion neither doubles nor loses its
step, and the endpoint it moves loses no request.

On Kubernetes' own control plane (`platform_nodes`: two nodes with a pod network, the real Prefect
Kubernetes worker on the cpu pool), the install's gateway and scheduler run two replicas each, as shipped,
and an endpoint of two stages takes constant requests through the gateway's Service. A promotion of its
canary (steps 20, 50, 100) runs as a Job on the cpu pool, as `mlyard endpoints rollout` queues it on a
cluster. At its second step the node its pod runs on is drained as `kubectl drain` drains it: cordoned,
then every pod on it evicted through the eviction API, retried while a PodDisruptionBudget refuses. So the
promotion's run, a gateway replica and a scheduler replica (perhaps the Lease's holder) go at once.

What must hold: the evicted run ends CRASHED (Prefect's engine in the pod, on the kubelet's SIGTERM), its Job
makes no second pod (backoffLimit 0), the scheduler that holds the Lease takes the promotion up once, in a
new Job on the other node, at the step it was at (the share of 20 % is never set again), and holds that
step for its full time before the canary becomes the default; no request through the gateway fails."""

from __future__ import annotations

import threading
import time
from http.server import ThreadingHTTPServer

import httpx
from kube_cluster import NS, final
from pod_moves import INFER, Load, Model, endpoint, evict, inferences, settled, wait

STEP_SECONDS = 15
FLOW = "promote-progressively/promote-progressively-kubernetes"


def _drain(api, node: str) -> dict[str, int]:
    """`kubectl drain node`: cordoned, then each pod on it evicted, an eviction a budget refuses (429) tried
    again every second until it is taken; how many times each pod was refused."""
    code, doc = api.request("PATCH", f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}},
                            "application/merge-patch+json")
    assert code == 200, doc
    refused: dict[str, int] = {}
    for pod in api.items("Pod", NS, f"spec.nodeName={node}"):
        name = pod["metadata"]["name"]
        refused[name] = 0
        while (answer := evict(api, NS, name))[0] == 429:
            refused[name] += 1
            time.sleep(1)
        assert answer[0] in (201, 404), answer  # 404: gone meanwhile (a Job's pod that ended)
    return refused


class Watch:
    """The promotion as the catalog has it, read every 0.1 s: each change of (its run, phase, step, status)."""

    def __init__(self, catalog_url: str, name: str):
        from mlyard.registry import Catalog
        from mlyard.registry.traffic import Traffic

        self.catalog = Catalog(catalog_url)
        self.traffic, self.name = Traffic(self.catalog), name
        self.seen: list[tuple[float, str, str, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            promos = self.traffic.promotions(self.name)
            if promos:
                p = promos[-1]
                now = (p["flow_run_id"], p["phase"], p["step"], p["status"])
                if not self.seen or self.seen[-1][1:] != now:
                    self.seen.append((time.monotonic(), *now))

    def last(self) -> tuple[float, str, str, int, str] | None:
        return self.seen[-1] if self.seen else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.catalog.dispose()


def _canary_shares(catalog_url: str, name: str, promotion: int) -> list[int | None]:
    """The canary's shares as the promotion's steps set them, in order (the serving history)."""
    from sqlalchemy import select

    from mlyard.registry import Catalog
    from mlyard.registry.tables import ServingHistory

    catalog = Catalog(catalog_url)
    try:
        with catalog.session() as s:
            rows = s.scalars(select(ServingHistory).where(ServingHistory.endpoint == name, ServingHistory.stage == "canary")
                             .order_by(ServingHistory.id))
            return [r.share for r in rows if (r.note or "").startswith(f"promotion {promotion}: step")]
    finally:
        catalog.dispose()


def _register_model(mlflow_uri: str) -> None:
    """Model m, version 1, in the cluster's registry: what both stages serve (the fixture sets MLflow's token)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    try:
        client.get_model_version("m", "1")
    except MlflowException:
        client.create_registered_model("m")
        run = client.create_run("0")
        client.create_model_version("m", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)


def _jobs_of(api, flow_run_id: str) -> list[dict]:
    return [j for j in api.items("Job", NS) if j["metadata"]["labels"].get("prefect.io/flow-run-id") == flow_run_id]


def _pods_of(api, job: dict) -> list[dict]:
    """The pods the Job controller made for `job` (its job-name label), those ended included."""
    code, doc = api.request("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3D"
                            + job["metadata"]["name"])
    assert code == 200, doc
    return doc["items"]


def _story(platform_nodes, flow_run_id: str) -> str:
    """What a failed wait shows: the run's state in Prefect, its Jobs' status and its pods' output."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    lines = [f"run {flow_run_id}: {state.type.value if state else None} {(state.message or '') if state else ''}"]
    for job in _jobs_of(platform_nodes.api, flow_run_id):
        lines.append(f"Job {job['metadata']['name']}: {job.get('status')}")
        for pod in _pods_of(platform_nodes.api, job):
            key = (NS, pod["metadata"]["name"])
            logs = "".join(node.api.pod_logs.get(key, "") for node in platform_nodes.nodes)
            lines.append(f"pod {key[1]} on {pod['spec'].get('nodeName')}: {pod['status'].get('phase')}\n{logs[-3000:]}")
    return "\n".join(lines)


def _logs(platform_nodes, prefix: str) -> str:
    """The output of the pods whose names start with `prefix`, on either node, gone ones included."""
    return "".join(f"\n--- {pod}\n{text[-2500:]}" for node in platform_nodes.nodes
                   for (ns, pod), text in node.api.pod_logs.items() if ns == NS and pod.startswith(prefix))


def test_a_node_drain_during_a_promotion_neither_doubles_nor_loses_its_step(platform_nodes, cluster_stores):
    from prefect.deployments import run_deployment

    api = platform_nodes.api
    platform_nodes.apply("gateway")
    platform_nodes.apply("scheduler", "mlyard-scheduler")
    model = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    _register_model(cluster_stores.mlflow_uri)
    name = endpoint(cluster_stores.catalog_url, f"http://127.0.0.1:{model.server_address[1]}", stages=("canary",))
    gw = platform_nodes.gateway.address
    url = f"http://{gw[0]}:{gw[1]}/{name}/m/v2/models/m/infer"
    watch = Watch(cluster_stores.catalog_url, name)
    load = None
    try:
        for part in ("gateway", "scheduler"):
            wait(lambda part=part: settled(api, NS, part), 180, f"the {part}'s replicas available")
        wait(lambda: httpx.post(url, json=INFER, timeout=5).status_code == 200, 60, "the endpoint answered")
        load = Load(inferences(url))
        first = run_deployment(FLOW, timeout=0, parameters={"spec": {
            "endpoint": name, "stage": "canary",
            "policy": {"steps": [20, 50, 100], "step_seconds": STEP_SECONDS, "keep_old": True}}})
        first_id = str(first.id)
        # at its second step (50 %), the node its pod runs on is drained
        try:
            wait(lambda: (s := watch.last()) and s[1:4] == (first_id, "steps", 1), 240, "the promotion at its second step")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; seen {watch.seen}\n{_story(platform_nodes, first_id)}") from None
        (job,) = _jobs_of(api, first_id)
        (pod,) = _pods_of(api, job)
        node = pod["spec"]["nodeName"]
        drained_at = time.monotonic()
        refused = _drain(api, node)
        assert pod["metadata"]["name"] in refused and any(p.startswith("gateway-") for p in refused), refused
        try:
            done = wait(lambda: (s := watch.last()) and s[4] in ("COMPLETE", "ROLLED BACK", "ABORTED") and s, 300,
                        "the promotion ended")
        except AssertionError as exc:
            runs = dict.fromkeys(run for _, run, *_ in watch.seen)
            raise AssertionError(f"{exc}; seen {watch.seen}\n" + "\n".join(_story(platform_nodes, r) for r in runs)
                                 + _logs(platform_nodes, "scheduler-")) from None
        time.sleep(2)
        load.stop()
    finally:
        if load is not None:
            load.stop()
        watch.close()
        model.shutdown()

    from mlyard.registry import Catalog
    from mlyard.registry.traffic import Traffic

    catalog = Catalog(cluster_stores.catalog_url)
    try:
        (promo,) = Traffic(catalog).promotions(name)
    finally:
        catalog.dispose()
    assert promo["status"] == "COMPLETE" and promo["resumes"] == 1, (promo, watch.seen)
    second_id = promo["flow_run_id"]
    assert done[1] == second_id != first_id
    assert final(first_id, 60).state.type.value == "CRASHED"  # the engine in the evicted pod, on SIGTERM
    assert final(second_id, 60).state.type.value == "COMPLETED"
    # one run moved it at a time: the first to its second step, then the second from that same step on
    runs = [run for _, run, *_ in watch.seen]
    assert runs == sorted(runs, key=lambda r: r == second_id), watch.seen  # never back to the first run
    taken_up = next(s for s in watch.seen if s[1] == second_id and s[2] == "steps")
    assert taken_up[3] == 1, watch.seen
    assert _canary_shares(cluster_stores.catalog_url, name, promo["id"]) == [20, 50]  # 20 % never set again
    assert done[0] - taken_up[0] >= STEP_SECONDS, watch.seen  # the step held in full after it was taken up
    # the evicted Job made no second pod; the new one ran on the node left
    (job,) = _jobs_of(api, first_id)
    assert job["status"].get("failed") == 1 and not job["status"].get("succeeded") and not job["status"].get("active"), job["status"]
    (job,) = _jobs_of(api, second_id)
    (pod,) = _pods_of(api, job)
    assert pod["spec"]["nodeName"] != node
    assert load.failed == [], f"{len(load.failed)} of {load.sent} requests failed: {load.failed[:5]}"
    assert load.sent > 100
    print(f"drained {node} at the promotion's second step: {len(refused)} pods evicted ({refused}); taken up "
          f"{taken_up[0] - drained_at:.1f} s later at step 2 by {second_id}; complete {done[0] - drained_at:.1f} s "
          f"after the drain; {load.sent} requests through the gateway, {len(load.failed)} failed")
