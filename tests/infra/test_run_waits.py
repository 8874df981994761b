"""A scheduled run the cluster cannot place yet is queued, not given up (issue 69 §3): the schedule's run on
the gpu pool asks for a GPU type no node has, so Kubernetes' own scheduler (tests/controlplane.py) leaves
its pod Pending. The worker took the run (PENDING, its Job made), so mlyard's scheduler (as the cluster
runs it, on the cluster's catalog; its start timeout 5 s here) keeps it going past that timeout and
starts no second one; the reason the cluster gives goes to the run's log (tasks/run_waits.py), as the Prefect UI's run page shows it. Kueue's Workload
condition is read the same way (a suspended Job); no Kueue runs on this control plane."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_only_a_kubernetes_workers_run_is_taken_so():
    """A process worker's run ("host:pid") starts at once or never: the start timeout still applies to it."""
    from types import SimpleNamespace

    from mlyard.tasks.run_waits import taken

    def run(state: str, pid: str | None):
        return SimpleNamespace(state=SimpleNamespace(type=SimpleNamespace(value=state)), infrastructure_pid=pid)

    assert taken(run("PENDING", "mlyard:heavy-ibis-6f2x"))
    assert not taken(run("PENDING", "worker-host:41357")) and not taken(run("PENDING", None))
    assert not taken(run("SCHEDULED", "mlyard:heavy-ibis-6f2x"))


def _runs(tag: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])), limit=50)


def test_a_scheduled_run_waiting_for_a_gpu_is_queued_with_its_reason_not_cancelled(real_cluster, monkeypatch,
                                                                                      tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.states import Cancelled

    import mlyard.schedule as schedules
    from mlyard.core.connection import connect
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules
    from mlyard.tasks.scheduling import Scheduler

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))  # the cluster's scheduler reads it (its Role)
    store = Schedules(Catalog(connect().catalog_db_url))  # the cluster's catalog (real_cluster's stores)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    spec = {"name": "waits-{{ slot_date }}", "experiment": "waits", "source_uri": str(EXAMPLES / "sklearn_digits"),
            "entry_point": "train.py", "resources": {"gpu_count": 1, "gpu_type": "Tesla-T4"}}  # the node has A100s
    schedules.create({"name": "waits", "deployment": "train/train-gpu", "cron": "* * * * * *",
                      "start_time": start.isoformat(), "max_concurrency": 1, "parameters": {"spec": spec}})
    tag = "mlyard.schedule:waits"
    try:
        with get_client(sync_client=True) as client:
            scheduler = Scheduler(store, client, start_timeout_seconds=5)  # the cluster's scheduler, its timeout short
            deadline = time.monotonic() + 90
            while not (taken := [r for r in _runs(tag) if r.state.type.value == "PENDING" and r.infrastructure_pid]):
                assert time.monotonic() < deadline, [(r.name, r.state.type.value) for r in _runs(tag)]
                scheduler.tick()
                time.sleep(0.5)
            (run,) = taken
            until = time.monotonic() + 15  # three times its start timeout, a pass every 0.5 s
            while time.monotonic() < until:
                scheduler.tick()
                time.sleep(0.5)
            said = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                    if log.message.startswith("waiting to start:")]
        runs = _runs(tag)
        assert [(r.id, r.state.type.value) for r in runs] == [(run.id, "PENDING")], [
            (r.name, r.state.type.value, r.state.message) for r in runs]
        assert schedules.show("waits")["slots"]["STARTED"] == 1
        # the reason the cluster gives, said when it changes, never twice in a row (its ephemeral volume's claim
        # unbound first, at times, then the node selector no node matches)
        assert said and all(a != b for a, b in zip(said, said[1:])) and len(said) <= 3, said
        assert "no node for its pod yet" in said[-1] and "node affinity/selector" in said[-1], said
        # a Job that is no more holds nothing: such a run is not waiting (the start timeout applies again)
        from mlyard.tasks.kubernetes import cluster_client
        from mlyard.tasks.run_waits import GONE, job_reason

        assert job_reason("mlyard:no-such-job", cluster_client("kube", "cluster")) == GONE
    finally:
        schedules.disable("waits")
        with get_client(sync_client=True) as client:
            for r in _runs(tag):
                if not r.state.is_final():
                    client.set_flow_run_state(r.id, Cancelled(message="the test ends"), force=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                schedules.delete("waits")
                break
            except Exception:  # noqa: BLE001 - a run still being cancelled
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
