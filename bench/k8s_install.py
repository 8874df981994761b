"""The platform on Kubernetes (issue 26), against Kubernetes' own control plane of the tests
(tests/controlplane.py: kube-apiserver, controller-manager and scheduler built by
tests/controlplane/build.sh, etcd; `make test` builds them):

1. `mlyard k8s render` of the whole platform from a fresh process (PATH and HOME only), median of 5.
2. `mlyard k8s apply` into an empty namespace, then again: its time, and how many objects the second
   apply changed (target: 0).
3. A flow run of `train/train-gpu` from its creation to its Job appearing in the API, through the real
   Prefect KubernetesWorker (default settings: it polls every 10 s, Prefect's default; and at 1 s),
   median of 5 each.

Run: `python bench/k8s_install.py` (about 3 minutes).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

import _stack  # noqa: E402
import yaml  # noqa: E402

_load = _stack.load_test_helper


controlplane = _load("controlplane")
for _helper in ("kubelet_sandbox", "kubelet"):  # what kubelet_node imports
    _load(_helper)
kubelet_node = _load("kubelet_node")

MLYARD = str(Path(sys.executable).parent / "mlyard")


def timed(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "LANG": "C.UTF-8"}
    t0 = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - t0, out


def render_and_apply(work: Path, plane) -> None:
    renders = []
    for _ in range(5):
        seconds, out = timed([MLYARD, "k8s", "render"], work)
        assert out.returncode == 0, out.stderr
        renders.append(seconds)
    objects = sum(1 for d in yaml.safe_load_all(out.stdout) if d)
    print(f"render: {objects} objects, median {statistics.median(renders):.2f} s (min {min(renders):.2f}, "
          f"max {max(renders):.2f})")
    import base64

    from kubernetes import client

    api = plane.api_client()
    core = client.CoreV1Api(api)
    # a node whose kubelet runs the migration Job (the apply waits for it) on SQLite files of the pods' user
    # bound in, as tests/infra/test_k8s_install.py's; the Deployments' pods stay ContainerCreating there
    databases = work / "databases"
    databases.mkdir(mode=0o700)
    os.chown(databases, 10001, 10001)
    node = kubelet_node.NodeKubelet(plane, "bench-install", str(ROOT), binds=(str(databases),), runs=lambda pod: any(
        o["kind"] == "Job" for o in pod["metadata"].get("ownerReferences") or []))
    try:
        config = plane.kubeconfig(path=work / "kubeconfig")
        core.create_namespace({"metadata": {"name": "mlyard"}})
        urls = {"database-url": f"sqlite+aiosqlite:///{databases}/prefect.db",
                "backend-store-uri": f"sqlite:///{databases}/mlflow.db", "mlyard_catalog_url": f"sqlite:///{databases}/catalog.db"}
        keys = {"mlyard-prefect": ("database-url", "auth-string"), "mlyard-mlflow": ("backend-store-uri",
                "artifacts-destination"), "mlyard-postgres": ("password",), "mlyard-settings": (
                "mlyard_catalog_url", "mlyard_s3_access_key_id", "mlyard_s3_secret_access_key", "mlyard_internal_token",
                "mlyard_replica_token")}
        for name, names in keys.items():
            core.create_namespaced_secret("mlyard", {"metadata": {"name": name}, "data": {
                k: base64.b64encode(urls.get(k, "x").encode()).decode() for k in names}})
        results = []
        for _ in range(2):
            seconds, out = timed([MLYARD, "k8s", "apply", "--kubeconfig", str(config), "--json"], work)
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)
            results.append((seconds, {k: sum(r["outcome"] == k for r in rows) for k in ("created", "changed", "unchanged")}))
        for n, (seconds, counts) in enumerate(results, 1):
            print(f"apply #{n}: {seconds:.2f} s, {counts}")
        changed = results[1][1]["created"] + results[1][1]["changed"]
        print(f"objects changed by the second apply: {changed} (target 0: {'OK' if changed == 0 else 'MISSED'})")
    finally:
        node.close()
        api.close()


def job_latency(work: Path, poll: float | None, plane) -> list[float]:
    from kubernetes import client
    from prefect.deployments import run_deployment

    api = plane.api_client()
    batch = client.BatchV1Api(api)
    jobs = lambda: batch.list_namespaced_job("mlyard").items  # noqa: E731
    config = plane.kubeconfig(path=work / f"kubeconfig-{poll}", namespace="mlyard")
    env = {**os.environ, "KUBECONFIG": str(config), "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": "mlyard"}
    if poll is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(poll)
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "gpu",
                               "--type", "kubernetes"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        spec = {"name": "bench", "source_uri": "s3://bench/algo", "entry_point": "main.py"}
        run_deployment("train/train-gpu", parameters={"spec": spec}, timeout=0)  # the worker's first, while it starts
        while not jobs():
            time.sleep(0.05)
        out = []
        for _ in range(5):
            before = len(jobs())
            fr = run_deployment("train/train-gpu", parameters={"spec": spec}, timeout=0)
            while len(jobs()) == before:
                time.sleep(0.01)
            out.append(time.time() - fr.created.timestamp())
        return out
    finally:
        from mlyard.tasks.processes import stop_group

        stop_group(worker, 10)
        api.close()


def main() -> None:
    if missing := controlplane.binaries_missing():
        raise SystemExit(f"the control plane is not built ({', '.join(missing)}): run `make test` or "
                         "tests/controlplane/build.sh first")
    work = Path(tempfile.mkdtemp(prefix="mlyard-bench-k8s-"))
    plane = controlplane.start(work / "controlplane")
    try:
        render_and_apply(work, plane)
        os.environ["MLYARD_CLUSTER_POOLS"] = "true"  # the embedded stack registers the gpu pool's deployments
        _stack.start()
        for poll in (None, 1.0):
            lat = job_latency(work, poll, plane)
            label = "default poll (10 s)" if poll is None else f"poll {poll:g} s"
            print(f"flow run created -> its Job in the API, {label}: median {statistics.median(lat):.2f} s "
                  f"(min {min(lat):.2f}, max {max(lat):.2f})")
    finally:
        plane.close()


if __name__ == "__main__":
    main()
