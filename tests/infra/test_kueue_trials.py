"""A tuning's parallel trials on the cluster wait for GPU quota in Kueue, not for nodes: 4 parallel trials of
1 GPU each as flow runs of `train/train-gpu`, through the real Prefect Kubernetes worker, on Kubernetes' own
control plane with Kueue itself (tests/kueue.py: its webhook suspends each Job labelled with a LocalQueue, its
controller admits them against the ClusterQueue's quota). The ClusterQueue and LocalQueue are the install's
own (infra/k8s/components/kueue), their GPU quota set to 2."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import yaml
from kube_cluster import NS, finished_job
from kueue import condition, holds_quota, install_queues, path, workloads

from mlyard.tasks.orchestration import KUEUE_QUEUE_LABEL

TRIAL = ("import sys, time\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\ntime.sleep(1.0)\n"
         "print(f\"accuracy={1 - abs(float(args['--x']) - 3) / 10}\", flush=True)\n")


def release(api) -> None:
    code, doc = api.request("PATCH", path("clusterqueues", None, "mlyard-gpu"), {"spec": {"stopPolicy": "None"}},
                            "application/merge-patch+json")
    assert code == 200, doc


def test_four_trials_on_two_gpus_of_quota_run_two_at_a_time(real_cluster, kueue, algorithm, monkeypatch):
    api = real_cluster.api
    # held until all four Jobs are queued: on a loaded machine the first pair could end before the last exists
    install_queues(api, gpus=2, hold=True)
    monkeypatch.setenv("MLYARD_KUEUE_QUEUE", "gpu")  # the install's ConfigMap names it (values: kueue_queue)
    samples: list[tuple[list[str], list[str]]] = []  # (holding quota, waiting with their reason), every 0.2 s
    stop, released = threading.Event(), threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            found = workloads(api, NS)
            if not released.is_set():
                if len(found) == 4:
                    release(api)
                    released.set()
                continue
            waiting = [f"{w['metadata']['name']}: {c['message']}" for w in found  # (not yet told of the release:
                       if (c := condition(w, "QuotaReserved")) and c["status"] == "False"  # the queue inactive)
                       and "is inactive" not in c["message"]]
            samples.append(([w["metadata"]["name"] for w in found if holds_quota(w)], waiting))

    threading.Thread(target=watch, daemon=True).start()
    from mlyard.core.settings import Settings
    from mlyard.core.specs.common import load_spec
    from mlyard.core.specs.tuning import TuningSpec
    from mlyard.flows.tuning import tune
    from mlyard.uploads import for_cluster

    spec = load_spec(TuningSpec, {
        "name": "kueue", "strategy": "grid", "parallel_trials": 4, "max_trials": 4, "trial_deployment": "train/train-gpu",
        "training": {"name": "t", "experiment": "kueue", "source_uri": str(algorithm(TRIAL)), "entry_point": "main.py",
                     "resources": {"gpu_count": 1}},
        "parameters": [{"name": "x", "type": "int", "min": 1, "max": 4, "step": 1}],
        "objective": {"metric": "accuracy", "direction": "maximize"}})
    spec = for_cluster(spec, Settings())  # the trials' pods read the source from the cluster's storage
    try:
        t0 = time.monotonic()
        result = tune(spec)
    finally:
        stop.set()
    jobs = [j for j in api.items("Job", NS) if j["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == "gpu"]
    assert len(jobs) == 4 and released.is_set(), [j["metadata"]["name"] for j in api.items("Job", NS)]
    assert result.counts["succeeded"] == 4 and result.best_params == {"x": 3}, result
    most = max((held for held, _ in samples), key=len)
    assert len(most) == 2, (most, samples[-5:])  # never more than the quota, and the quota used
    waited = {line.split(":")[0] for _, lines in samples for line in lines}
    assert len(waited) == 2, samples  # two trials waited for quota, Kueue saying why
    reasons = {line for _, lines in samples for line in lines}
    assert all("insufficient unused quota for nvidia.com/gpu" in r for r in reasons), reasons
    assert all(finished_job(api, j["metadata"]["name"])["status"].get("succeeded") == 1 for j in jobs)
    assert time.monotonic() - t0 < 300


def test_a_multi_node_trainings_nodes_are_admitted_all_together_or_not_at_all(real_api, kueue):
    """Gang admission: the node Job of a 2-node training of 2 GPUs each carries the queue's label, so Kueue
    holds all of it (no node's pod is made, no GPU taken) while the quota has 3 GPUs, and starts both nodes
    at once when the quota grows to 4."""
    from job_templates import render as render_job

    from mlyard.core.specs import TrainingSpec
    from mlyard.prefect_setup import GPU_TEMPLATE
    from mlyard.tasks import node_jobs

    spec = TrainingSpec(name="ddp", source_uri="s3://b/algo", entry_point="train.py", nodes=2,
                        resources={"gpu_count": 2})
    coordinator = render_job(json.loads(GPU_TEMPLATE.read_text()), {**spec.job_variables(), "image": "mlyard:0.1.0"})
    job = node_jobs.NodeJob("mlyard-nodes-gang", NS, 2)
    _, nodes = node_jobs.render(spec, {"spec": coordinator["spec"]["template"]["spec"]}, job, "gang", "run", "gpu")
    assert nodes["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu"
    for doc in yaml.safe_load_all((Path(__file__).resolve().parents[2] / "infra" / "k8s" / "base" / "flow-runs.yaml")
                                  .read_text()):
        real_api.create(doc["kind"], doc["apiVersion"], NS, doc)  # the runs' identities, as the install makes them
    install_queues(real_api, gpus=3)
    made = real_api.create("Job", "batch/v1", NS, nodes, "mlyard")
    assert made["spec"]["suspend"] is True  # Kueue's webhook

    def pods() -> list[dict]:
        return [p for p in real_api.items("Pod", NS) if p["metadata"]["labels"].get("job-name") == job.name]

    deadline = time.monotonic() + 30
    while not (found := workloads(real_api, NS)) or not condition(found[0], "QuotaReserved"):
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    time.sleep(2)  # Kueue has decided, and holds it whole
    (workload,) = workloads(real_api, NS)
    assert condition(workload, "QuotaReserved")["status"] == "False", workload["status"]
    assert "insufficient quota for nvidia.com/gpu in flavor gpu, previously considered podsets requests (0) + " \
           "current podset request (4) > maximum capacity (3)" in condition(workload, "QuotaReserved")["message"]
    assert real_api.get("Job", NS, job.name)["spec"]["suspend"] and pods() == []

    install_queues(real_api, gpus=4)
    deadline = time.monotonic() + 30
    while len(made := pods()) < 2:
        assert time.monotonic() < deadline, (len(made), workloads(real_api, NS)[0]["status"])
        time.sleep(0.2)
    assert len(made) == 2 and holds_quota(workloads(real_api, NS)[0])
