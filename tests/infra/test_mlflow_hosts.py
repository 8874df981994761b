"""MLflow's server by its Service name: MLflow 3.17 refuses a request whose Host header it does not allow (403
"Invalid Host header", a DNS-rebinding check from which /health is exempt, so its probes pass while every
tracking call from a pod fails). A real `mlflow server`, started with the environment the shipped Deployment
gives it (as kubelet resolves it: the namespace from the downward API, `$(POD_NAMESPACE)` expanded), answers
the names pods use and refuses others."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from kube_api import KubeApi, Kubelet

from core.assets import infra
from registry.tracking import prepare_db
from tasks.cluster import kustomize


def mlflow_pod(namespace: str, mlflow: dict[str, str] | None = None,
               settings: dict[str, str] | None = None) -> tuple[dict, dict[str, str]]:
    """The shipped mlflow Deployment's container and its environment as kubelet resolves it, with these
    values in its Secrets (empty ones where not given)."""
    import base64

    objs = kustomize(infra("k8s", "overlays", "dev"))
    deployment = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    secrets = {"mlyard-mlflow": {"backend-store-uri": "", "artifacts-destination": "", **(mlflow or {})},
               "mlyard-settings": {"mlyard_s3_access_key_id": "", "mlyard_s3_secret_access_key": "",
                                   "mlyard_internal_token": "", **(settings or {})}}
    api = KubeApi()
    kubelet = Kubelet(api, "/")
    try:
        for name, data in secrets.items():
            api.create("Secret", "v1", namespace, {"metadata": {"name": name}, "data": {
                k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}, "kubectl")
        return container, kubelet.resolve_env(namespace, container)
    finally:
        kubelet.close()
        api.close()


def _status(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow server on a free loopback port, with the given allowed hosts (None: MLflow's default)."""
    procs = []

    def start(allowed: str | None) -> str:
        db = tmp_path / f"mlflow-{len(procs)}.db"
        shutil.copyfile(prepare_db(), db)
        port = free_port()
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               **({"MLFLOW_SERVER_ALLOWED_HOSTS": allowed} if allowed is not None else {})}
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root", str(tmp_path)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                return url
            except OSError:
                assert procs[-1].poll() is None, "mlflow server exited"
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start")

    yield start
    from tasks.processes import stop_group

    for proc in procs:
        stop_group(proc, 5)


def test_the_shipped_mlflow_answers_the_names_pods_use(mlflow_server):
    _, env = mlflow_pod("ml-platform")
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert "$(" not in allowed and "mlflow.ml-platform.svc" in allowed, allowed
    url = mlflow_server(allowed)
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    for host in ("mlflow:5000", "mlflow", "mlflow.ml-platform:5000", "mlflow.ml-platform.svc:5000",
                 "mlflow.ml-platform.svc.cluster.local:5000", "localhost:5000"):
        assert _status(search, host) == 200, host
    assert _status(search, "attacker.example:5000") == 403  # the rebinding check still holds for everyone else


def test_without_the_allowed_hosts_mlflow_refuses_its_service_name_while_health_passes(mlflow_server):
    """What the platform met before: the probe healthy, every tracking call refused."""
    url = mlflow_server(None)
    assert _status(f"{url}/health", "mlflow:5000") == 200
    assert _status(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", "mlflow:5000") == 403
