"""The gpu pool's worker rolled as its Deployment's rolling update rolls it (issue 69 §2), on Kubernetes' own
control plane with the real Prefect Kubernetes worker: while a member queues a run every 2 s, a new worker
starts beside the old one (maxSurge: 1), then the old one gets SIGTERM and stops within its grace period, as
kubelet stops its pod. A run either worker takes is taken once (Prefect lets one worker move it to PENDING),
so every run gets exactly one Job, and none is left behind: every run completes. A run the old worker moved to
PENDING and stopped before making its Job is queued again by the new worker's sweep (tasks/pool_worker.py)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

from kube_cluster import NS, final, run_training


def test_a_rolling_restart_of_the_worker_gives_every_queued_run_one_job_and_loses_none(real_cluster, algorithm):
    api = real_cluster.api
    src = algorithm("print('accuracy=0.5', flush=True)\n")
    submitted: list[str] = []
    stop = threading.Event()

    def member() -> None:  # a run queued every 2 s, before, during and after the handover
        while not stop.is_set():
            spec = {"name": f"roll-{len(submitted)}", "experiment": "worker-rollout", "source_uri": str(src),
                    "entry_point": "main.py"}
            submitted.append(run_training(spec)[0])
            stop.wait(2)

    queueing = threading.Thread(target=member, daemon=True)
    queueing.start()
    try:
        time.sleep(3)
        real_cluster.start_worker("kube-test-2")  # the new pod's worker, heartbeating beside the old one
        old = real_cluster.worker
        old.send_signal(signal.SIGTERM)  # the old pod deleted: its worker stops (grace 30 s, then SIGKILL)
        try:
            old.wait(30)
        except Exception:  # noqa: BLE001 - as kubelet does after the grace period
            old.kill()
            old.wait()
        time.sleep(4)  # and runs still come
    finally:
        stop.set()
        queueing.join(30)
    assert len(submitted) >= 5, submitted
    states = {run_id: final(run_id, timeout=400).state.type.value for run_id in submitted}
    assert set(states.values()) == {"COMPLETED"}, states
    jobs = Counter(j["metadata"]["labels"].get("prefect.io/flow-run-id") for j in api.items("Job", NS))
    assert {run_id: jobs[run_id] for run_id in submitted} == {run_id: 1 for run_id in submitted}, jobs


def test_a_run_left_pending_by_a_gone_worker_is_queued_again_and_one_with_a_job_or_a_live_claimant_is_not(
        real_cluster, algorithm):
    """What a worker stopped between claiming a run and making its Job leaves, made as it leaves it: the run
    PENDING, labelled with its worker, no Job. The pool's next worker queues it again and it completes with one
    Job; a run claimed by a worker that is alive, or whose Job exists (suspended here), stays as it is."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    api = real_cluster.api
    real_cluster.worker.send_signal(signal.SIGTERM)  # no worker takes the runs while they are set up
    real_cluster.worker.wait(30)
    src = algorithm("print('accuracy=0.5', flush=True)\n")
    gone, alive, with_job = (run_training({"name": name, "experiment": "stranded", "source_uri": str(src),
                                           "entry_point": "main.py"})[0] for name in ("gone", "alive", "with-job"))
    with get_client(sync_client=True) as client:
        for run_id, claimant in ((gone, "a-worker-gone-long-ago"), (alive, "kube-test-2"),
                                 (with_job, "a-worker-gone-long-ago")):
            assert client.set_flow_run_state(run_id, Pending()).status.value == "ACCEPT"
            client.update_flow_run_labels(run_id, {"prefect.worker.name": claimant})
    api.create("Job", "batch/v1", NS, {"metadata": {"name": "made-before-its-worker-stopped",
                                                   "labels": {"prefect.io/flow-run-id": with_job}},
                                      "spec": {"suspend": True, "template": {"spec": {
                                          "restartPolicy": "Never", "containers": [{"name": "c", "image": "mlyard"}]}}}})
    began = time.monotonic()
    real_cluster.start_worker("kube-test-2", MLYARD_STRANDED_AFTER_SECONDS="5")  # Prefect dates a state itself
    done = final(gone, timeout=120)
    assert done.state.type.value == "COMPLETED", done.state
    assert time.monotonic() - began < 60  # one sweep (15 s) after its start, and the run itself
    with get_client(sync_client=True) as client:
        states = [s.name for s in client.read_flow_run_states(gone)]
        assert "Scheduled" in states[states.index("Pending"):], states  # queued again, then taken
        for run_id in (alive, with_job):
            assert client.read_flow_run(run_id).state.type.value == "PENDING"
    jobs = Counter(j["metadata"]["labels"].get("prefect.io/flow-run-id") for j in api.items("Job", NS))
    assert (jobs[gone], jobs[alive], jobs[with_job]) == (1, 0, 1), jobs
