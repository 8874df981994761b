"""Each project's Kueue queues, as a platform admin makes them on a cluster: `mlyard projects queues` (a fresh
process, the running stack's projects) renders a ClusterQueue with the project's quota in the gpu pool's
cohort and the LocalQueue its Jobs wait in, and applies them (server-side) to the API emulator; a second
apply changes nothing. The label that picks the queue is the platform's: a caller's own is replaced."""

from __future__ import annotations

import json

import yaml

from tests.test_user_paths import mlyard


def test_each_project_gets_a_cluster_queue_with_its_quota_and_a_local_queue(stack, api, tmp_path, monkeypatch):
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
        "cpu": 8, "memory": 0, "nvidia.com/gpu": 2}
    two = objs[("ClusterQueue", "mlyard-qa-two")]["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
    assert {r["name"]: r["nominalQuota"] for r in two}["nvidia.com/gpu"] == 0  # no quota of its own: borrows
    local = objs[("LocalQueue", "gpu-team-qa-one")]
    assert local["metadata"]["namespace"] == "mlyard" and local["spec"]["clusterQueue"] == "mlyard-qa-one"
    assert ("LocalQueue", "gpu-team-default") not in objs  # the default project's runs use the pool's queue

    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", namespace="mlyard")
    first = mlyard("projects", "queues", "-f", str(values), "--apply", "--kubeconfig", str(kubeconfig), "--json")
    assert first.returncode == 0, first.stderr
    assert {(a["kind"], a["outcome"]) for a in json.loads(first.stdout) if "qa-" in a["name"]} == {
        ("ClusterQueue", "created"), ("LocalQueue", "created")}
    again = mlyard("projects", "queues", "-f", str(values), "--apply", "--kubeconfig", str(kubeconfig), "--json")
    assert {a["outcome"] for a in json.loads(again.stdout)} == {"unchanged"}
    applied = {(o["kind"], o["metadata"]["name"]) for o in api.objects.values()}
    assert {("ClusterQueue", "mlyard-qa-one"), ("LocalQueue", "gpu-team-qa-two")} <= applied

    # a run's Job waits in its project's queue, whatever label its caller gave
    from mlyard.tasks.orchestration import KUEUE_QUEUE_LABEL, with_queue_label

    monkeypatch.setenv("MLYARD_KUEUE_QUEUE", "gpu-team")
    given = {"labels": {KUEUE_QUEUE_LABEL: "gpu-team-qa-two", "team": "x"}}
    assert with_queue_label(given, "qa-one")["labels"] == {KUEUE_QUEUE_LABEL: "gpu-team-qa-one", "team": "x"}
    assert with_queue_label(given)["labels"][KUEUE_QUEUE_LABEL] == "gpu-team"

    member = mlyard("projects", "queues", "-f", str(values))
    assert member.returncode == 0 and "kind: LocalQueue" in member.stdout
