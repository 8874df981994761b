"""Each project's Kueue queues, as a platform admin makes them on a cluster: `mlyard projects queues` (a fresh
process, the running stack's projects) renders a ClusterQueue with the project's quota in the gpu pool's
cohort and the LocalQueue its Jobs wait in, and applies them (server-side) to Kubernetes' own API server
with Kueue itself running (tests/kueue.py; its webhooks validate them); a second apply changes nothing.
Kueue then holds the projects to them: a project with no GPUs of its own borrows what the cohort leaves
idle, and one that asks for more than is idle waits, saying why (issue 69 §3). The label that picks the
queue is the platform's: a caller's own is replaced."""

from __future__ import annotations

import json
import time

import yaml
from kueue import install_queues, path

from mlyard.tasks.orchestration import KUEUE_QUEUE_LABEL
from tests.test_user_paths import mlyard


def test_each_project_gets_a_cluster_queue_with_its_quota_and_a_local_queue(stack, real_api, kueue, tmp_path,
                                                                            monkeypatch):
    api = real_api
    for args in (("qa-one", "--gpus", "2", "--cpus", "8"), ("qa-two",)):
        made = mlyard("projects", "create", *args)
        assert made.returncode == 0, made.stderr
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"namespace": "mlyard", "kueue_queue": "gpu-team"}))
    out = mlyard("projects", "queues", "-f", str(values), "--json")
    assert out.returncode == 0, out.stderr
    objs = {(o["kind"], o["metadata"]["name"]): o for o in json.loads(out.stdout)}
    one = objs[("ClusterQueue", "mlyard-qa-one")]["spec"]
    assert one["cohortName"] == "mlyard"  # the gpu pool's ClusterQueue's cohort: idle quota is borrowed
    assert {r["name"]: r["nominalQuota"] for r in one["resourceGroups"][0]["flavors"][0]["resources"]} == {
        "cpu": "8", "memory": "0", "nvidia.com/gpu": "2"}
    two = objs[("ClusterQueue", "mlyard-qa-two")]["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    assert {r["name"]: r["nominalQuota"] for r in two}["nvidia.com/gpu"] == "0"  # no quota of its own: borrows
    local = objs[("LocalQueue", "gpu-team-qa-one")]
    assert local["metadata"]["namespace"] == "mlyard" and local["spec"]["clusterQueue"] == "mlyard-qa-one"
    assert ("LocalQueue", "gpu-team-default") not in objs  # the default project's runs use the pool's queue

    kubeconfig = tmp_path / "kubeconfig"  # real_api's: the cluster's admin, namespace mlyard
    first = mlyard("projects", "queues", "-f", str(values), "--apply", "--kubeconfig", str(kubeconfig), "--json")
    assert first.returncode == 0, first.stderr
    assert {(a["kind"], a["outcome"]) for a in json.loads(first.stdout) if "qa-" in a["name"]} == {
        ("ClusterQueue", "created"), ("LocalQueue", "created")}
    again = mlyard("projects", "queues", "-f", str(values), "--apply", "--kubeconfig", str(kubeconfig), "--json")
    assert {a["outcome"] for a in json.loads(again.stdout)} == {"unchanged"}
    assert api.request("GET", path("clusterqueues", None, "mlyard-qa-one"))[0] == 200
    assert api.request("GET", path("localqueues", "mlyard", "gpu-team-qa-two"))[0] == 200

    # Kueue holds the projects to them, beside the gpu pool's ClusterQueue (the install's, 2 GPUs here)
    install_queues(api, gpus=2)
    assert _job(api, "borrows", "gpu-team-qa-two", 1)  # qa-two has no GPU of its own: it borrows an idle one
    deadline = time.monotonic() + 30
    while (usage := _gpus(api, "mlyard-qa-two")) != {"total": "1", "borrowed": "1"}:
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)
    _job(api, "too-big", "gpu-team-qa-two", 4)  # 3 of the cohort's 4 are idle
    from mlyard.tasks.kubernetes import cluster_client
    from mlyard.tasks.run_waits import job_reason

    deadline = time.monotonic() + 30
    while not (said := job_reason("mlyard:too-big", cluster_client("kube", "cluster"))) or "couldn't" not in said:
        assert time.monotonic() < deadline, said
        time.sleep(0.2)
    assert said.startswith("queued in Kueue: couldn't assign flavors to pod set main: insufficient unused quota "
                           "for nvidia.com/gpu in flavor gpu, 1 more needed"), said
    assert api.get("Job", "mlyard", "too-big")["spec"]["suspend"] is True

    # a run's Job waits in its project's queue, whatever label its caller gave
    from mlyard.tasks.orchestration import with_queue_label

    monkeypatch.setenv("MLYARD_KUEUE_QUEUE", "gpu-team")
    given = {"labels": {KUEUE_QUEUE_LABEL: "gpu-team-qa-two", "team": "x"}}
    assert with_queue_label(given, "qa-one")["labels"] == {KUEUE_QUEUE_LABEL: "gpu-team-qa-one", "team": "x"}
    assert with_queue_label(given)["labels"][KUEUE_QUEUE_LABEL] == "gpu-team"

    member = mlyard("projects", "queues", "-f", str(values))
    assert member.returncode == 0 and "kind: LocalQueue" in member.stdout


def _job(api, name: str, queue: str, gpus: int) -> dict:
    """A Job of `gpus` GPUs in the LocalQueue `queue` (its pods never run: no node here, nor needed)."""
    return api.create("Job", "batch/v1", "mlyard", {"metadata": {"name": name, "labels": {KUEUE_QUEUE_LABEL: queue}},
                      "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                          {"name": "main", "image": "mlyard:0.1.0", "command": ["true"],
                           "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}}})


def _gpus(api, cluster_queue: str) -> dict:
    """The ClusterQueue's GPUs in use, and how many of them are borrowed, as Kueue reports them."""
    code, cq = api.request("GET", path("clusterqueues", None, cluster_queue))
    for flavor in (cq.get("status") or {}).get("flavorsUsage") or []:
        for r in flavor["resources"]:
            if r["name"] == "nvidia.com/gpu":
                return {"total": str(r.get("total", 0)), "borrowed": str(r.get("borrowed", 0))}
    return {}
