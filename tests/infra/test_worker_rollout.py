"""The gpu pool's worker rolled as its Deployment's rolling update rolls it (issue 69 §2), on Kubernetes' own
control plane with the real Prefect Kubernetes worker: while a member queues a run every 2 s, a new worker
starts beside the old one (maxSurge: 1), then the old one gets SIGTERM and stops within its grace period, as
kubelet stops its pod. A run either worker takes is taken once (Prefect lets one worker move it to PENDING),
so every run gets exactly one Job, and none is left behind: every run completes."""

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
