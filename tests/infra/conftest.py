"""The tests' Kubernetes cluster: the API emulator of tests/kube_api.py, a kubelet playing its nodes on this
machine, and the real Prefect Kubernetes worker (prefect-kubernetes 0.8, its kopf observer included) on
the gpu pool. Each pod's command runs as a process here with the container's environment resolved from
the API's objects (the mlyard-config ConfigMap gives it the test stack's MLflow and catalog), so a flow
run in a "pod" reports to the test stack's Prefect as a pod's would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kube_api import KubeApi, Kubelet
from kube_cluster import NS, ROOT

from mlyard.warm import SOCKET
from mlyard.warm.client import detach


@pytest.fixture(scope="session")
def pod_runner(stack, tmp_path_factory):
    """A warm runner for the emulated cluster's flow-run pods (see Kubelet), one for the session: its
    home holds only its socket; each pod's child takes that pod's own environment."""
    import signal

    from mlyard import warm

    home = tmp_path_factory.mktemp("pod-runner")
    (home / "logs").mkdir()
    with open(home / "logs" / "warm-runner.log", "ab") as out:  # `setsid -f`: no child of a test (leak guard)
        subprocess.run(["setsid", "-f", sys.executable, "-m", "mlyard.warm.server", str(home)], cwd=ROOT, stdout=out,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True)
    deadline = time.monotonic() + 120
    while warm.runner_pid(home) is None and time.monotonic() < deadline:
        time.sleep(0.2)  # not ready in time: the pods start cold, as on a cluster
    yield str(home)
    if (pid := warm.runner_pid(home)) is not None:
        os.killpg(pid, signal.SIGTERM)


@pytest.fixture()
def api(tmp_path, monkeypatch):
    """The Kubernetes API emulator alone, with KUBECONFIG pointing at it (namespace mlyard)."""
    server = KubeApi()
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig", namespace="mlyard")))
    yield server
    server.close()


@pytest.fixture
def cluster(stack, settings, tmp_path, pod_runner):
    """A Kubernetes API emulator with the platform's namespace and ConfigMap, a Kubelet, and the real
    Prefect Kubernetes worker on the gpu pool pointed at it (per test: all of it ends with the test)."""
    # per test: the worker and the pods' processes end with it, before the leak guard looks
    _cancel_queued_gpu_runs()
    api = KubeApi()
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    api.create("Namespace", "v1", None, {"metadata": {"name": NS}}, "kubectl")
    api.create("ConfigMap", "v1", NS, {"metadata": {"name": "mlyard-config"}, "data": {
        "MLYARD_MLFLOW_TRACKING_URI": settings.mlflow_uri, "MLYARD_CATALOG_URL": settings.catalog_db_url,
        "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}}, "kubectl")
    data = tmp_path / "data"  # the pod's data storage volume, at /mlyard/data in a real pod
    data.mkdir()
    # the pod reaches the API through the kubeconfig, as a real one does through its service account token
    kubelet = Kubelet(api, str(ROOT), overrides={"MLYARD_HOME": str(data), "KUBECONFIG": str(kubeconfig)},
                      warm_home=pod_runner)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": NS,
           "PREFECT_WORKER_QUERY_SECONDS": "0.5"}
    log = tmp_path / "worker.log"
    began = datetime.now(timezone.utc)
    # `prefect worker start`, forked from the pods' warm runner, which has Prefect imported (4 s of CPU a
    # test otherwise); Prefect's own CLI in a process of its own if that runner is not there
    args = ["worker", "start", "--pool", "gpu", "--type", "kubernetes", "--name", "kube-test"]
    worker: int | subprocess.Popen | None = detach(Path(pod_runner) / "warm" / SOCKET, "prefect", args, log, env,
                                                   ROOT)
    if worker is None:
        with open(log, "w") as out:
            worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), *args], env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_worker(worker, began, log)  # a worker stuck starting fails the test, never hangs it
        yield api, kubelet
    finally:
        from tasks.processes import stop_group

        # Prefect's worker CLI stops gracefully on SIGTERM; late in a whole suite its kopf observer often
        # took over 10 s to stop (every cluster test's teardown then took 10 s), and nothing here needs it
        # graceful: SIGKILL after 2 s (as Prefect's CLI does on a second SIGTERM)
        stop_group(worker, 2)
        kubelet.close()
        api.close()
        if os.environ.get("MLYARD_KEEP_TEST_HOME"):
            print(log.read_text())


def _wait_for_worker(worker: int | subprocess.Popen, began: datetime, log: Path, timeout: float = 120) -> None:
    """Until the worker has sent a heartbeat to the pool (it does once its kopf observer is up)."""
    from prefect.client.orchestration import get_client

    from tasks.processes import alive

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not any(w.name == "kube-test" and w.last_heartbeat_time and w.last_heartbeat_time > began
                      for w in client.read_workers_for_work_pool("gpu")):
            gone = worker.poll() is not None if isinstance(worker, subprocess.Popen) else not alive(worker)
            if gone or time.monotonic() > deadline:
                pytest.fail(f"the Kubernetes worker did not start within {timeout:.0f} s (gone: {gone}):\n"
                            + log.read_text()[-3000:])
            time.sleep(0.5)


def _cancel_queued_gpu_runs() -> None:
    """Runs of the gpu pool that earlier tests on this stack queued and left (schedules on train/gpu) would
    be this test's worker's to run: cancel them first, so each test's cluster runs only its own."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        while queued := client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING]))),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=["gpu"])), limit=200):
            for run in queued:
                client.set_flow_run_state(run.id, Cancelled(message="left queued by an earlier test"), force=True)
