"""The platform on Kubernetes (issue 26), against the API emulator of tests/kube_api.py (no cluster runs
here; what a real API server adds, admission and etcd, is not in these figures):

1. `mlyard k8s render` of the whole platform from a fresh process (PATH and HOME only), median of 5.
2. `mlyard k8s apply` into an empty namespace, then again: its time, and how many objects the second
   apply changed (target: 0).
3. A flow run of `train/train-gpu` from its creation to its Job appearing in the API, through the real
   Prefect KubernetesWorker (default settings: it polls every 10 s, Prefect's default; and at 1 s),
   median of 5 each.

Run: `python bench/kubernetes.py` (about 3 minutes).
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
import importlib.util  # noqa: E402

import _stack  # noqa: E402
import yaml  # noqa: E402

# the emulator from tests/ by its path: tests/ on sys.path would shadow the project's packages
_spec = importlib.util.spec_from_file_location("kube_api", ROOT / "tests" / "kube_api.py")
assert _spec and _spec.loader
kube_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kube_api)
KubeApi = kube_api.KubeApi

MLYARD = str(Path(sys.executable).parent / "mlyard")


def timed(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "LANG": "C.UTF-8"}
    t0 = time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - t0, out


def render_and_apply(work: Path) -> None:
    renders = []
    for _ in range(5):
        seconds, out = timed([MLYARD, "k8s", "render"], work)
        assert out.returncode == 0, out.stderr
        renders.append(seconds)
    objects = sum(1 for d in yaml.safe_load_all(out.stdout) if d)
    print(f"render: {objects} objects, median {statistics.median(renders):.2f} s (min {min(renders):.2f}, "
          f"max {max(renders):.2f})")
    api = KubeApi()
    try:
        config = api.kubeconfig(work / "kubeconfig")
        api.create("Namespace", "v1", None, {"metadata": {"name": "mlyard"}}, "kubectl")
        keys = {"mlyard-prefect": ("database-url", "auth-string"), "mlyard-mlflow": ("backend-store-uri",
                "artifacts-destination"), "mlyard-postgres": ("password",), "mlyard-settings": (
                "mlyard_s3_access_key_id", "mlyard_s3_secret_access_key", "mlyard_internal_token", "mlyard_replica_token")}
        for name, names in keys.items():
            api.create("Secret", "v1", "mlyard", {"metadata": {"name": name}, "data": {k: "eA==" for k in names}},
                       "kubectl")
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
        api.close()


def job_latency(work: Path, poll: float | None) -> list[float]:
    from prefect.deployments import run_deployment

    api = KubeApi()
    config = api.kubeconfig(work / f"kubeconfig-{poll}", namespace="mlyard")
    env = {**os.environ, "KUBECONFIG": str(config), "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": "mlyard"}
    if poll is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(poll)
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "gpu",
                               "--type", "kubernetes"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        spec = {"name": "bench", "source_uri": "s3://bench/algo", "entry_point": "main.py"}
        run_deployment("train/train-gpu", parameters={"spec": spec}, timeout=0)  # the worker's first, while it starts
        while not api.items("Job"):
            time.sleep(0.05)
        out = []
        for _ in range(5):
            before = len(api.items("Job"))
            fr = run_deployment("train/train-gpu", parameters={"spec": spec}, timeout=0)
            while len(api.items("Job")) == before:
                time.sleep(0.01)
            out.append(time.time() - fr.created.timestamp())
        return out
    finally:
        from mlyard.tasks.processes import stop_group

        stop_group(worker, 10)
        api.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mlyard-bench-k8s-"))
    render_and_apply(work)
    _stack.start()
    for poll in (None, 1.0):
        lat = job_latency(work, poll)
        label = "default poll (10 s)" if poll is None else f"poll {poll:g} s"
        print(f"flow run created -> its Job in the API, {label}: median {statistics.median(lat):.2f} s "
              f"(min {min(lat):.2f}, max {max(lat):.2f})")


if __name__ == "__main__":
    main()
