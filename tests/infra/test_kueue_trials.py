"""A tuning's parallel trials on the cluster wait for GPU quota in Kueue, not for nodes: 4 parallel
trials of 1 GPU each as flow runs of `train/train-gpu`, through the real Prefect Kubernetes worker, against the
API emulator (tests/kube_api.py). No Kueue runs here, so the test plays it, as its two halves do on a
cluster: the webhook suspends every Job labelled with a LocalQueue, and the controller admits
suspended Jobs in creation order while the ClusterQueue's `nvidia.com/gpu` quota (2 here) holds them,
releasing a Job's GPUs when it ends. The ClusterQueue and LocalQueue are the install's own
(infra/k8s/components/kueue), applied to the emulator."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml
from kube_api import Controller
from kube_cluster import NS, finished_job

from mlyard.tasks.orchestration import KUEUE_QUEUE_LABEL

QUEUES = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "components" / "kueue" / "queues.yaml"
TRIAL = ("import sys, time\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\ntime.sleep(1.0)\n"
         "print(f\"accuracy={1 - abs(float(args['--x']) - 3) / 10}\", flush=True)\n")


class Kueue(Controller):
    """Kueue's webhook and its controller for one ClusterQueue's `nvidia.com/gpu` quota."""

    def __init__(self, api, quota: int, queued_first: int = 0):
        # queued_first: admit nothing until that many Jobs are queued (the worker makes the trials' Jobs one
        # by one; on a loaded machine the first pair could end before the last Job exists)
        self.api, self.quota, self.queued_first = api, quota, queued_first
        self.admitted: dict[str, int] = {}  # Job name -> GPUs, while it runs
        self.most = 0  # the most GPUs admitted at once
        self.waited: set[str] = set()  # Jobs that found the quota used up
        self.order: list[str] = []  # the queue's Jobs in the order they were created
        api.admission.append(self._webhook)
        super().__init__()

    def _webhook(self, kind: str, obj: dict) -> None:
        if kind == "Job" and KUEUE_QUEUE_LABEL in obj["metadata"].get("labels", {}):
            obj["spec"]["suspend"] = True
            self.order.append(obj["metadata"]["name"])

    @staticmethod
    def _gpus(job: dict) -> int:
        """What Kueue charges a Job: its pods' GPUs times its parallelism, all at once (a multi-node training's
        nodes are admitted together or not at all). A pod's are its containers' and its sidecars' (the code
        host, which runs the user's code, holds them), as Kubernetes counts a pod's requests."""
        spec = job["spec"]["template"]["spec"]
        sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        per_pod = sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
                      for c in [*spec["containers"], *sidecars])
        return per_pod * int(job["spec"].get("parallelism") or 1)

    def step(self) -> None:
        if len(self.order) < self.queued_first:
            return
        with self.api._cond:
            queued = {j["metadata"]["name"]: j for j in self.api.items("Job", NS)}
            jobs = [queued[n] for n in self.order if n in queued]
            for j in jobs:  # a finished Job gives its quota back
                if j["metadata"]["name"] in self.admitted and j.get("status", {}).get("conditions"):
                    del self.admitted[j["metadata"]["name"]]
            blocked = False  # strict FIFO, as the ClusterQueue's default queueing strategy: none passes a waiting one
            for j in jobs:
                name = j["metadata"]["name"]
                if not j["spec"].get("suspend") or name in self.admitted:
                    continue
                if blocked or sum(self.admitted.values()) + self._gpus(j) > self.quota:
                    self.waited.add(name)
                    blocked = True
                    continue
                body = {k: v for k, v in j.items() if k != "status"}
                body["spec"] = {**j["spec"], "suspend": False}
                self.api._update(("Job", NS, name), body, "kueue-admission", None)
                self.admitted[name] = self._gpus(j)
                self.most = max(self.most, sum(self.admitted.values()))


def test_four_trials_on_two_gpus_of_quota_run_two_at_a_time(cluster, algorithm, tmp_path, monkeypatch):
    api, kubelet = cluster
    for obj in yaml.safe_load_all(QUEUES.read_text()):
        if obj["kind"] == "ClusterQueue":
            for r in obj["spec"]["resourceGroups"][0]["flavors"][0]["resources"]:
                if r["name"] == "nvidia.com/gpu":
                    r["nominalQuota"] = 2  # two GPUs of quota for four trials that want one each
        api.create(obj["kind"], obj["apiVersion"], NS if obj["kind"] == "LocalQueue" else None, obj, "kubectl")
    quota = next(r["nominalQuota"] for r in api.get("ClusterQueue", "", "mlyard-gpu")["spec"]["resourceGroups"][0]
                 ["flavors"][0]["resources"] if r["name"] == "nvidia.com/gpu")
    kueue = Kueue(api, quota, queued_first=4)
    monkeypatch.setenv("MLYARD_KUEUE_QUEUE", "gpu")  # the install's ConfigMap names it (values: kueue_queue)
    running: list[list[str]] = []

    def count_pods(stop: threading.Event) -> None:  # pods of the trials' Jobs that run at once
        while not stop.wait(0.05):
            running.append([f"{p['metadata']['name']} (Job {p['metadata']['labels'].get('job-name')})"
                            for p in api.items("Pod", NS) if p.get("status", {}).get("phase") == "Running"
                            and p["metadata"]["labels"].get("job-name") in kueue.order])

    stop = threading.Event()
    threading.Thread(target=count_pods, args=(stop,), daemon=True).start()
    from mlyard.core.specs.common import load_spec
    from mlyard.core.specs.tuning import TuningSpec
    from mlyard.flows.tuning import tune

    spec = load_spec(TuningSpec, {
        "name": "kueue", "strategy": "grid", "parallel_trials": 4, "max_trials": 4, "trial_deployment": "train/train-gpu",
        "training": {"name": "t", "experiment": "kueue", "source_uri": str(algorithm(TRIAL)), "entry_point": "main.py",
                     "resources": {"gpu_count": 1}},
        "parameters": [{"name": "x", "type": "int", "min": 1, "max": 4, "step": 1}],
        "objective": {"metric": "accuracy", "direction": "maximize"}})
    from mlyard.core.settings import Settings
    from mlyard.uploads import for_cluster

    spec = for_cluster(spec, Settings())  # the trials' pods read the source from the cluster's storage
    try:
        t0 = time.monotonic()
        result = tune(spec)
    finally:
        stop.set()
        kueue.close()
    jobs = [j for j in api.items("Job", NS) if j["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == "gpu"]
    assert len(jobs) == 4, [j["metadata"]["name"] for j in api.items("Job", NS)]
    assert result.counts["succeeded"] == 4 and result.best_params == {"x": 3}, result
    most = max(running, key=len)
    assert kueue.most == 2 and len(most) == 2, (kueue.most, most, sorted(kueue.order))  # never more than the quota
    assert len(kueue.waited) == 2, "two trials waited for quota"
    assert all(finished_job(api, j["metadata"]["name"])["status"].get("succeeded") == 1 for j in jobs)
    assert time.monotonic() - t0 < 300


def test_a_multi_node_trainings_nodes_are_admitted_all_together_or_not_at_all(tmp_path):
    """Gang admission: the node Job of a 2-node training of 2 GPUs each carries the queue's label, so Kueue
    holds all of it (no node starts, the other's GPUs are not taken) while the quota has 3 GPUs free, and
    starts both nodes at once when 4 are."""
    import json

    from job_templates import render as render_job
    from kube_api import KubeApi, Kubelet

    from mlyard.core.specs import TrainingSpec
    from mlyard.prefect_setup import GPU_TEMPLATE
    from mlyard.tasks import node_jobs

    spec = TrainingSpec(name="ddp", source_uri="s3://b/algo", entry_point="train.py", nodes=2,
                        resources={"gpu_count": 2})
    coordinator = render_job(json.loads(GPU_TEMPLATE.read_text()), {**spec.job_variables(), "image": "mlyard:0.1.0"})
    job = node_jobs.NodeJob("mlyard-nodes-gang", NS, 2)
    _, nodes = node_jobs.render(spec, {"spec": coordinator["spec"]["template"]["spec"]}, job, "gang", "run", "gpu")
    assert nodes["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu"
    nodes["spec"]["template"]["spec"]["containers"][0]["command"] = ["sleep", "2"]  # the nodes' work is not the point
    for quota, started in ((3, 0), (4, 2)):
        api = KubeApi()
        kueue = Kueue(api, quota)
        kubelet = Kubelet(api, str(tmp_path))
        try:
            api.create("Job", "batch/v1", NS, json.loads(json.dumps(nodes)), "mlyard")
            time.sleep(3)
            pods = [p for p in api.items("Pod", NS) if p["metadata"]["labels"].get("job-name") == job.name]
            assert len(pods) == started, (quota, len(pods))
            assert kueue.most in (0, 4) and (job.name in kueue.waited) == (started == 0)
        finally:
            kubelet.close()
            kueue.close()
            api.close()
