"""The scheduler's replicas on a cluster elect one leader through a Lease (tasks/leader.py): only the
holder schedules, and when it dies (kill -9) the other takes over within 30 s. Two real scheduler
processes against the Kubernetes API emulator of tests/kube_api.py (no cluster runs here), each with its
own empty catalog so that they schedule nothing of the other tests'."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kube_api import KubeApi

ROOT = Path(__file__).resolve().parents[2]
NS = "mlyard"


def _holder(api: KubeApi) -> str | None:
    lease = api.objects.get(("Lease", NS, "mlyard-scheduler"))
    return lease["spec"].get("holderIdentity") if lease else None


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s")


def test_one_replica_leads_and_another_takes_over_within_30_s(stack, tmp_path):
    api = KubeApi()
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    api.create("Namespace", "v1", None, {"metadata": {"name": NS}}, "kubectl")
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    try:
        for name in ("replica-a", "replica-b"):
            logs[name] = tmp_path / f"{name}.log"
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MLYARD_SCHEDULER_LEASE": "mlyard-scheduler",
                   "MLYARD_KUBE_NAMESPACE": NS, "POD_NAME": name, "TZ": "UTC",
                   "MLYARD_CATALOG_URL": f"sqlite:///{tmp_path / name}.db"}
            with open(logs[name], "w") as out:
                procs[name] = subprocess.Popen([sys.executable, "-m", "tasks.scheduling"], cwd=ROOT, env=env,
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
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        api.close()


def test_the_manifests_give_the_scheduler_what_the_election_needs():
    from tasks import cluster
    from tasks.leader import LEASE_SECONDS, RENEW_SECONDS, RETRY_SECONDS

    objs = cluster.kustomize(ROOT / "infra" / "k8s" / "overlays" / "dev")
    scheduler = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "scheduler")
    env = {e["name"]: e for e in scheduler["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLYARD_SCHEDULER_LEASE"]["value"] == "mlyard-scheduler" and env["TZ"]["value"] == "UTC"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert LEASE_SECONDS + RETRY_SECONDS <= 30 and LEASE_SECONDS > RENEW_SECONDS > 1.2 * RETRY_SECONDS
