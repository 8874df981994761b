"""The control loops' one writer on a cluster, through Leases (tasks/leader.py), against Kubernetes' own
control plane (tests/controlplane.py), each replica as the install's ServiceAccount with a token the API
server issued and the Role the manifests give it (nothing more):
- the scheduler's replicas elect one leader: only the holder schedules, and when it dies (kill -9) the other
  takes over within 30 s, and no slot runs twice (two real scheduler processes, sharing a catalog of their
  own, so that they schedule nothing of the other tests', that holds a schedule firing every second);
- the API's replicas answer all the same, but only the holder of mlyard-api follows crashed runs (ends
  their MLflow runs), and the other takes that over within 30 s of the holder's kill -9 (two crash
  followers on an MLflow store of their own, so that the stack's own API sees none of their runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kubelet_node import ClusterApi
from schedule_slots import every_second, finish_all, finisher_of, slots

ROOT = Path(__file__).resolve().parents[2]
NS = "mlyard-lease"
NS_API = "mlyard-lease-api"


def _holder(api: ClusterApi, name: str = "mlyard-scheduler", ns: str = NS) -> str | None:
    lease = api.get_object("Lease", ns, name)
    return lease["spec"].get("holderIdentity") if lease else None


def _as_the_account(api: ClusterApi, plane, path: Path, account: str = "mlyard-scheduler",
                    ns: str = NS) -> Path:
    """The install's `account` and its Role, as the manifests make them, in `ns`; a kubeconfig with a token the
    API server issues to that account (what its pods' token is)."""
    import yaml
    from pod_moves import account_token

    api.create("Namespace", "v1", None, {"metadata": {"name": ns}})
    token = account_token(api, ns, account)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "pod",
        "clusters": [{"name": "c", "cluster": {"server": plane.url, "certificate-authority": str(plane.ca)}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "c", "user": account, "namespace": ns}}]}))
    path.chmod(0o600)
    return path


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s")


def test_one_replica_leads_and_another_takes_over_within_30_s(stack, tmp_path, control_plane):
    """...and every second's slot runs once: none twice across the change of leader, none lost (catch-up)."""
    from collections import Counter
    from datetime import datetime, timezone

    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    kubeconfig = _as_the_account(api, control_plane, tmp_path / "kubeconfig")
    catalog_url = f"sqlite:///{tmp_path / 'shared.db'}"  # the replicas' one catalog (the cluster's database)
    tag = every_second(catalog_url)
    stop = threading.Event()
    finisher = threading.Thread(target=finisher_of, args=(tag, stop), name="finisher")
    finisher.start()
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    try:
        for name in ("replica-a", "replica-b"):
            logs[name] = tmp_path / f"{name}.log"
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MLYARD_LEASE": "mlyard-scheduler",
                   "MLYARD_KUBE_NAMESPACE": NS, "POD_NAME": name, "TZ": "UTC", "MLYARD_CATALOG_URL": catalog_url,
                   "MLYARD_SCHEDULE_START_TIMEOUT_SECONDS": "600"}  # queued runs are not reclaimed meanwhile
            with open(logs[name], "w") as out:
                procs[name] = subprocess.Popen([sys.executable, "-m", "mlyard.tasks.scheduling"], cwd=ROOT, env=env,
                                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        leader = _wait(lambda: _holder(api), 60, "no replica took the Lease")
        follower = next(n for n in procs if n != leader)
        _wait(lambda: "scheduler started" in logs[leader].read_text(), 30, "the leader did not start scheduling")
        time.sleep(5)  # both run: the Lease stays, the follower waits without scheduling
        assert _holder(api) == leader
        assert "scheduler started" not in logs[follower].read_text()
        assert "waits for Lease" in logs[follower].read_text()

        os.killpg(procs[leader].pid, signal.SIGKILL)
        procs[leader].wait()
        killed = time.monotonic()
        _wait(lambda: _holder(api) == follower, 30, "the follower did not take the Lease over")
        _wait(lambda: "scheduler started" in logs[follower].read_text(), 30 - (time.monotonic() - killed),
              "the follower did not start scheduling")
        took = time.monotonic() - killed
        assert took <= 30, f"taken over after {took:.1f} s"
        print(f"the follower took over {took:.1f} s after the leader's kill -9")
        assert procs[follower].poll() is None

        # Every slot from the schedule's start to now ran exactly once, across the change of leader.
        until = datetime.now(timezone.utc).replace(microsecond=0)
        first = until.timestamp() - 1
        seen = _wait(lambda: (c := Counter(slots(tag))) and max(
            datetime.strptime(t.split(":", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
            for t in c) >= first and c, 30, "the slots up to now")
        assert all(n == 1 for n in seen.values()), [t for t, n in seen.items() if n > 1]
        times = sorted(datetime.strptime(t.split(":", 1)[1], "%Y%m%dT%H%M%SZ") for t in seen)
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        assert set(gaps) == {1.0}, f"a slot was lost: gaps {sorted(set(gaps))}"
        print(f"{len(times)} slots, each once, across the takeover")
    finally:
        from mlyard.tasks.processes import stop_group

        for proc in procs.values():
            stop_group(proc, 15)
        stop.set()
        finisher.join(10)
        finish_all(tag)
        api.drop_namespace(NS)


def test_the_manifests_give_the_scheduler_what_the_election_needs():
    from mlyard.tasks import cluster
    from mlyard.tasks.leader import LEASE_SECONDS, RENEW_SECONDS, RETRY_SECONDS

    objs = cluster.kustomize(ROOT / "infra" / "k8s" / "overlays" / "dev")
    scheduler = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "scheduler")
    env = {e["name"]: e for e in scheduler["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLYARD_LEASE"]["value"] == "mlyard-scheduler" and env["TZ"]["value"] == "UTC"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert LEASE_SECONDS + RETRY_SECONDS <= 30 and LEASE_SECONDS > RENEW_SECONDS > 1.2 * RETRY_SECONDS


CRASH_FOLLOWER = """
import logging
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
from mlyard import crashes
from mlyard.core.settings import Settings
from mlyard.warm_api import platform
settings = Settings()  # as mlyard/service.py starts it
crashes.follow(platform().tracking, settings.catalog_db_url, settings.lease, settings.kube_namespace).join()
"""


def _crashed_training(tracking, client, deployment_id) -> tuple[str, str]:
    """A flow run that CRASHED while its training's MLflow run was RUNNING: (the MLflow run, the flow run)."""
    from prefect.states import Crashed

    from mlyard.core.names import TAG_KIND, TAG_TRAINING_ID

    spec = {"name": "crash-lease", "source_uri": str(ROOT / "examples" / "sklearn_digits"), "entry_point": "train.py"}
    run = client.create_flow_run_from_deployment(deployment_id, parameters={"spec": spec}, tags=["mlyard.test:crash-lease"])
    mlflow_run = tracking.start_run("crash-lease", f"crash-{run.id}", {TAG_KIND: "training", TAG_TRAINING_ID: str(run.id)})
    client.set_flow_run_state(run.id, Crashed(message="the node went away"), force=True)
    return mlflow_run, str(run.id)


def test_one_api_replica_follows_the_crashes_and_another_takes_over_within_30_s(stack, tmp_path, control_plane):
    """Two crash followers as the API's replicas start them (MLYARD_LEASE=mlyard-api, as the install's
    mlyard-api account): a crashed run's MLflow run is ended by the holder alone; after its kill -9, a run
    that crashed while nobody led is ended by the other within 30 s."""
    from prefect.client.orchestration import get_client

    from mlyard.registry.tracking import Tracking

    api = ClusterApi(control_plane.url, control_plane.ssl_context())
    kubeconfig = _as_the_account(api, control_plane, tmp_path / "kubeconfig", "mlyard-api", NS_API)
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the replicas' own store: the stack's API sees none of it
    tracking = Tracking(mlflow_uri)

    def status(run_id: str) -> str:
        return tracking.client.get_run(run_id).info.status

    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    try:
        for name in ("api-a", "api-b"):
            logs[name] = tmp_path / f"{name}.log"
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MLYARD_LEASE": "mlyard-api", "MLYARD_KUBE_NAMESPACE": NS_API,
                   "POD_NAME": name, "TZ": "UTC", "MLYARD_MLFLOW_TRACKING_URI": mlflow_uri,
                   "MLYARD_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}"}
            with open(logs[name], "w") as out:
                procs[name] = subprocess.Popen([sys.executable, "-c", CRASH_FOLLOWER], cwd=tmp_path, env=env,
                                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        leader = _wait(lambda: _holder(api, "mlyard-api", NS_API), 60, "no replica took the Lease")
        other = next(n for n in procs if n != leader)
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("train/train-gpu")  # no worker takes its runs here
            first, first_flow = _crashed_training(tracking, client, deployment.id)
            _wait(lambda: status(first) == "FAILED", 30, "the leader did not end the crashed run's MLflow run")
            time.sleep(3)  # the other has seen the same event by now, were it listening
            assert first_flow in logs[leader].read_text()
            assert first_flow not in logs[other].read_text(), "both replicas wrote"
            assert "waits for Lease" in logs[other].read_text()

            os.killpg(procs[leader].pid, signal.SIGKILL)
            procs[leader].wait()
            killed = time.monotonic()
            second, second_flow = _crashed_training(tracking, client, deployment.id)  # nobody leads for now
            _wait(lambda: status(second) == "FAILED", 30, "the other replica did not take the crashes over")
            took = time.monotonic() - killed
        assert _holder(api, "mlyard-api", NS_API) == other and second_flow in logs[other].read_text()
        assert "its Prefect flow run crashed: the node went away" in tracking.client.get_run(second).data.tags[
            "mlyard.status_reason"]
        print(f"the other API replica ended a crashed run {took:.1f} s after the leader's kill -9")
    finally:
        from mlyard.tasks.processes import stop_group

        for proc in procs.values():
            stop_group(proc, 15)
        api.drop_namespace(NS_API)
