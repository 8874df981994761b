"""MLflow's server by its Service name: MLflow 3.17 refuses a request whose Host header it does not allow (403
"Invalid Host header", a DNS-rebinding check from which /health is exempt, so its probes pass while every
tracking call from a pod fails). A real `mlflow server`, started with the environment the shipped Deployment
gives it (as kubelet resolves it: the namespace from the downward API, `$(POD_NAMESPACE)` expanded), answers
the names pods use and refuses others. Started with the Deployment's own command, it answers the
platform's processes alone: anything else in the namespace (a model's server, a notebook's kernel, a
training's script) is refused before it is read."""

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
from kubelet_sandbox import resolve_env

from mlyard.core.assets import infra
from mlyard.registry.tracking import prepare_db
from mlyard.tasks.cluster import kustomize


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
    objects = {("Secret", name): {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
               for name, data in secrets.items()}
    return container, resolve_env(container, namespace, lambda kind, name: objects.get((kind, name)))


def shipped_mlflow(tmp_path: Path, token: str) -> tuple[str, subprocess.Popen]:
    """The mlflow Deployment's command and environment (as kubelet resolves them, with its Secrets holding
    `token` as the internal credential), its host and port made this test's; its URL once healthy, and its
    process (stop it with mlyard.tasks.processes.stop_group)."""
    import httpx

    container, env = mlflow_pod("mlyard", mlflow={"backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                                  "artifacts-destination": str(tmp_path / "artifacts")},
                                settings={"mlyard_s3_access_key_id": "k", "mlyard_s3_secret_access_key": "s",
                                          "mlyard_internal_token": token})
    shutil.copyfile(prepare_db(), tmp_path / "mlflow.db")
    port = free_port()
    script = container["command"][2].replace("--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {port}")
    assert "--app-name mlyard-server" in script and env["MLYARD_INTERNAL_TOKEN"] == token
    env = {**env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}  # /tmp/metrics in the pod
    server = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200 and server.poll() is None:
                return url, server  # its own answer: not another server's that took the port first
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-3000:]
        time.sleep(0.3)


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

    def start(allowed: str | None, **more: str) -> str:
        db = tmp_path / f"mlflow-{len(procs)}.db"
        shutil.copyfile(prepare_db(), db)
        port = free_port()
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               **({"MLFLOW_SERVER_ALLOWED_HOSTS": allowed} if allowed is not None else {}), **more}
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

    start.procs = procs  # type: ignore[attr-defined]
    yield start
    from mlyard.tasks.processes import stop_group

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


def test_the_shipped_mlflow_runs_no_job_processes_beside_its_workers(mlflow_server):
    """MLflow 3.17 starts a job runner and eight huey consumers beside its workers (1.4 GB measured) for GenAI
    jobs that mlyard never submits; the pod turns them off."""
    import os

    _, env = mlflow_pod("ml-platform")
    mlflow_server("", MLFLOW_SERVER_ENABLE_JOB_EXECUTION=env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"])
    group = os.getpgid(mlflow_server.procs[-1].pid)
    time.sleep(2)  # what would start the jobs' processes has run by now (they start with the server)
    commands = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getpgid(int(pid)) == group:
                commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    assert not [c for c in commands if "huey" in c or "_job_runner" in c], commands
    assert len(commands) <= 3, commands  # mlflow's launcher, uvicorn and its worker at most


def test_without_the_allowed_hosts_mlflow_refuses_its_service_name_while_health_passes(mlflow_server):
    """What the platform met before: the probe healthy, every tracking call refused."""
    url = mlflow_server(None)
    assert _status(f"{url}/health", "mlflow:5000") == 200
    assert _status(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", "mlflow:5000") == 403


PLATFORM_PROCESS = """
from mlyard.core.settings import Settings, apply_engine_env
settings = Settings()
apply_engine_env(settings)  # as every platform process does (flows/platform.py)
from mlyard.registry.tracking import Tracking
print(Tracking(settings.mlflow_uri).experiment_id("made-by-a-flow", create=True))
"""

ANYTHING_ELSE = """
import sys
from mlflow import MlflowClient
try:
    MlflowClient(sys.argv[1]).search_experiments()
except Exception as exc:
    print(type(exc).__name__, str(exc)[:200])
else:
    print("REACHED")
"""


def test_the_tracking_service_answers_the_platforms_processes_alone(tmp_path):
    """The `mlflow` Service answered anyone in the namespace: a member's notebook kernel or model listed every
    project's runs. The shipped server refuses every request without the tracking credential (401, its
    body unread), health checks aside; a platform process (its settings from the mlyard-settings Secret)
    sends it without being told; the internal credential itself opens no tracking route."""
    import httpx

    from mlyard.tasks.processes import stop_group

    token = "internal-" + __import__("os").urandom(8).hex()
    url, server = shipped_mlflow(tmp_path, token)
    bin_folder = Path(sys.executable).parent
    try:
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        assert httpx.get(search, timeout=10).status_code == 401
        assert httpx.get(search, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 401
        assert httpx.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "x"}, timeout=10).status_code == 401
        assert httpx.get(f"{url}/", timeout=10).status_code == 401  # the UI's page too
        pod = {"PATH": f"{bin_folder}:/usr/bin:/bin", "HOME": str(tmp_path), "MLYARD_HOME": str(tmp_path / "home"),
               "MLYARD_MLFLOW_TRACKING_URI": url, "MLFLOW_DISABLE_TELEMETRY": "true"}
        made = subprocess.run([sys.executable, "-c", PLATFORM_PROCESS], env={**pod, "MLYARD_INTERNAL_TOKEN": token},
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
        assert made.returncode == 0 and made.stdout.strip().isdigit(), made.stderr[-2000:]
        other = subprocess.run([sys.executable, "-c", ANYTHING_ELSE, url], env=pod, capture_output=True, text=True,
                               timeout=120)
        assert "REACHED" not in other.stdout and "401" in other.stdout, (other.stdout, other.stderr[-2000:])
    finally:
        stop_group(server, 5)
