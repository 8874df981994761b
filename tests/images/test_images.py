"""Every image mlyard ships, built from infra/docker/mlyard.Dockerfile on this machine, and each entry point run
in it as a cluster runs it: as the image's non-root user, on a read-only root file system, with only the
writable paths the manifests mount (tests/images/container.py says how that is emulated here).

- platform: `mlyard --help`; a Prefect server (the cpu pool's and the workers' image carries the same
  Prefect), the gpu pool's worker against it, the scheduler, the gateway, the mlyard API and MLflow's
  server (each to its health route or its first line), and a flow-run pod's command (`python -m
  prefect.engine`) running a real training of a script mounted into it;
- serving: `mlyard serve` of a scikit-learn model, answering a prediction;
- training-cpu and training-cuda: a script that imports torch (the CUDA build: CUDA libraries, no GPU here);
- notebook: JupyterLab answering its API.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import free_port
from container import Container

from mlyard.tasks.processes import stop_group

TOKEN = "t" * 40
POD = {"HOME": "/tmp", "MLYARD_HOME": "/tmp/mlyard", "PREFECT_HOME": "/tmp/prefect"}


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _healthy(url: str, proc, log: Path, timeout: float = 180, headers: dict[str, str] | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url}: exited {proc.returncode}\n{log.read_text()[-3000:]}"
        try:
            status, body = _get(url, headers)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s\n{log.read_text()[-3000:]}")


def _line(log: Path, proc, words: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if words in text:
            return text
        assert proc.poll() is None, f"exited {proc.returncode} before {words!r}:\n{text[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {words!r} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def shared():
    """A new folder the image's user can read (a test's tmp_path is root's alone), removed after the test."""
    import shutil

    folders: list[Path] = []

    def make() -> Path:
        folders.append(Path(tempfile.mkdtemp()))
        return folders[-1]

    yield make
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def started():
    procs = []
    yield procs
    for proc in procs:
        stop_group(proc, 5)


def test_the_platform_image_runs_its_services_as_its_user_on_a_read_only_root(images, tmp_path, started):
    with Container(images["platform"]) as box:
        assert box.user == "10001:10001"
        helped = box.run(["mlyard", "--help"], POD)
        assert helped.returncode == 0 and "Start the embedded stack" in helped.stdout, helped.stderr
        who = box.run(["sh", "-c", "id -u; touch /opt/mlyard/x; touch /tmp/ok && echo tmp-writable"], POD)
        assert who.stdout.split()[0] == "10001" and "Read-only file system" in who.stderr, who
        assert "tmp-writable" in who.stdout

        def start(name: str, argv: list[str], env: dict[str, str]):
            log = tmp_path / f"{name}.log"
            proc = box.start(argv, {**POD, **env}, log)
            started.append(proc)
            return proc, log

        prefect_port = free_port()
        api_url = f"http://127.0.0.1:{prefect_port}/api"
        server, log = start("prefect", ["prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                        str(prefect_port)], {"PREFECT_UI_ENABLED": "false"})
        _healthy(f"{api_url}/health", server, log)

        worker, log = start("worker", ["python", "-m", "mlyard.tasks.pool_worker", "--pool", "gpu", "--type", "kubernetes"],
                            {"PREFECT_API_URL": api_url})
        _line(log, worker, "started")

        stores = {"MLYARD_MLFLOW_TRACKING_URI": "sqlite:////tmp/mlflow.db", "MLYARD_CATALOG_URL":
                  "sqlite:////tmp/catalog.db", "PREFECT_API_URL": api_url, "MLYARD_PREFECT_API_URL": api_url,
                  "MLYARD_INTERNAL_TOKEN": TOKEN,
                  "MLYARD_REPLICA_TOKEN": TOKEN}
        scheduler, log = start("scheduler", ["python", "-m", "mlyard.tasks.scheduling"], stores)
        _line(log, scheduler, "scheduler started")

        port = free_port()
        gateway, log = start("gateway", ["python", "-m", "mlyard.serving.gateway_main", "--host", "127.0.0.1", "--port",
                                         str(port)], stores)
        _healthy(f"http://127.0.0.1:{port}/mlyard/health", gateway, log)

        port = free_port()
        api, log = start("api", ["python", "-m", "mlyard.service", "--host", "127.0.0.1", "--port", str(port)], stores)
        _healthy(f"http://127.0.0.1:{port}/health", api, log)

        port = free_port()
        # as the mlflow Deployment runs it: the wheel's MLflow app plugin, its /metrics for the internal credential
        mlflow, log = start("mlflow", ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                       "--app-name", "mlyard-server", "--backend-store-uri", "sqlite:////tmp/mlflow.db",
                                       "--default-artifact-root", "/tmp/artifacts"],
                            {"MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow:*", "PROMETHEUS_MULTIPROC_DIR": "/tmp/metrics",
                             "MLYARD_INTERNAL_TOKEN": TOKEN})
        _healthy(f"http://127.0.0.1:{port}/health", mlflow, log)
        from mlyard.core.environment import tracking_token

        search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(search, {"Host": "mlflow:5000"})[0] == 401  # the platform's processes alone
        assert _get(search, {"Host": "mlflow:5000", "Authorization": f"Bearer {tracking_token(TOKEN)}"})[0] == 200
        assert _get(f"http://127.0.0.1:{port}/metrics", {"Host": "mlflow:5000"})[0] == 401
        status, text = _get(f"http://127.0.0.1:{port}/metrics", {"Host": "mlflow:5000", "Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "mlyard_mlflow_requests_total" in text, text[:2000]


def test_a_flow_run_pods_command_runs_a_training_in_the_platform_image(images, tmp_path, started, shared):
    """What the worker's Job runs, `python -m prefect.engine`, with a flow run of the gpu pool's `train`
    deployment: the training of a script mounted into the pod, its data storage a volume of the pod's
    fsGroup, and the run COMPLETED on the Prefect server (in the image too)."""
    from prefect.client.orchestration import SyncPrefectClient

    algo = shared()
    (algo / "train.py").write_text("import os\nprint(f'loss=0.25 uid={os.getuid()}')\n"
                                   "open(os.path.join(os.environ['EM_MODEL_DIR'], 'model.txt'), 'w').write('m')\n")
    _readable(algo)
    data = shared()  # the pod's data volume, which the flow's container and its code host both mount
    os.chown(data, 0, 10001)
    data.chmod(0o2775)
    with Container(images["platform"], binds={str(algo): "/algo"}, shared={str(data): "/mlyard/data"}) as box:
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        server = box.start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                           {**POD, "PREFECT_UI_ENABLED": "false"}, tmp_path / "prefect.log")
        started.append(server)
        _healthy(f"{api_url}/health", server, tmp_path / "prefect.log")
        # MLflow as on the cluster: its server (from the same image, answering the platform's tracking credential
        # alone), storing the run's artifacts itself
        mlflow_port = free_port()
        mlflow = box.start(["mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                            "--app-name", "mlyard-server", "--backend-store-uri", "sqlite:////tmp/mlflow.db",
                            "--artifacts-destination", "/tmp/artifacts"],
                           {**POD, "PROMETHEUS_MULTIPROC_DIR": "/tmp/metrics", "MLYARD_INTERNAL_TOKEN": TOKEN},
                           tmp_path / "mlflow.log")
        started.append(mlflow)
        _healthy(f"http://127.0.0.1:{mlflow_port}/health", mlflow, tmp_path / "mlflow.log")
        with SyncPrefectClient(api_url) as client:
            flow_id = client.create_flow_from_name("train")
            deployment = client.create_deployment(flow_id, "gpu", entrypoint="mlyard.flows.training.train",
                                                  pull_steps=[{"prefect.deployments.steps.set_working_directory":
                                                               {"directory": "."}}])
            spec = {"name": "in-image", "experiment": "images", "source_uri": "/algo", "entry_point": "train.py"}
            run = client.create_flow_run_from_deployment(deployment, parameters={"spec": spec})
        # the pod's code host, as the job templates start it: the image's Python, as its own user (10002)
        code_host = box.start(["python", "-I", "-m", "mlyard.tasks.code_host", "serve", "/mlyard/data/code"],
                              {"PYTHONUNBUFFERED": "1"}, tmp_path / "code-host.log", user="10002:10001")
        started.append(code_host)
        env = {**POD, "MLYARD_HOME": "/mlyard/data", "MLYARD_CODE_HOST": "/mlyard/data/code",
               "PREFECT_API_URL": api_url, "MLYARD_PREFECT_API_URL": api_url,
               "PREFECT__FLOW_RUN_ID": str(run.id),
               "MLYARD_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "MLYARD_INTERNAL_TOKEN": TOKEN,
               "MLYARD_CATALOG_URL": "sqlite:////mlyard/data/catalog.db"}
        done = box.run(["python", "-m", "prefect.engine"], env, timeout=300)
        with SyncPrefectClient(api_url) as client:
            state = client.read_flow_run(run.id).state
        assert state is not None and state.is_completed(), done.stdout[-3000:] + done.stderr[-3000:]
        assert "loss=0.25 uid=10002" in done.stdout + done.stderr, "the script ran in the code host"
        assert "running the pod's user code" in (tmp_path / "code-host.log").read_text()


def test_the_serving_image_serves_a_model_as_its_user(images, tmp_path, started, shared):
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LinearRegression

    model = shared() / "model"
    x = np.arange(10.0).reshape(-1, 1)
    mlflow.sklearn.save_model(LinearRegression().fit(x, 2 * x.ravel() + 1), str(model))
    _readable(model.parent)
    with Container(images["serving"], binds={str(model): "/models/line"}) as box:
        assert box.user == "10001:10001" and box.config["Entrypoint"] == ["mlyard", "serve"]
        port = free_port()
        log = tmp_path / "serve.log"
        proc = box.start(["mlyard", "serve", "/models/line", "--host", "127.0.0.1", "--port", str(port)], {}, log)
        started.append(proc)
        _healthy(f"http://127.0.0.1:{port}/v2/health/ready", proc, log)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/line:predict",
                                         data=b'{"instances": [[3.0]]}', headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert json.load(answer)["predictions"] == [pytest.approx(7.0)]


@pytest.mark.parametrize("target, cuda", [("training-cpu", False), ("training-cuda", True)])
def test_the_training_images_run_a_script_that_imports_torch(images, target, cuda, tmp_path):
    from tests.images.conftest import _build_module

    build = _build_module()
    if not cuda and not build.cpu_torch(build.pip_mounts(tmp_path)[1]):
        cuda = True  # no CPU build to be had on this machine: the build said so, and carries PyPI's (CUDA) torch
    with Container(images[target], writable={"/mlyard/data": 10001}) as box:
        assert box.user == "10001:10001"
        script = ("import os, torch\nx = torch.ones(3) * 2\nprint('sum', float(x.sum()), 'cuda', torch.version.cuda)\n"
                  "open('/mlyard/data/out.txt', 'w').write('ok')\n")
        out = box.run(["python", "-c", script], {"MLYARD_HOME": "/mlyard/data"})
        assert out.returncode == 0, out.stderr[-3000:]
        assert "sum 6.0" in out.stdout and ("cuda None" not in out.stdout) == cuda, out.stdout


def test_the_notebook_image_starts_jupyterlab_as_its_user(images, tmp_path, started):
    with Container(images["notebook"], writable={"/mlyard/notebook/boot": 10001, "/mlyard/notebook/data": 10001}) as box:
        assert box.user == "10001:10001"
        port, token = free_port(), uuid.uuid4().hex
        log = tmp_path / "lab.log"
        proc = box.start(["jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
                          f"--IdentityProvider.token={token}", "--ServerApp.root_dir=/mlyard/notebook/data"],
                         {"HOME": "/mlyard/notebook/boot/home", "JUPYTER_RUNTIME_DIR": "/tmp/jupyter"}, log)
        started.append(proc)
        body = _healthy(f"http://127.0.0.1:{port}/api/status", proc, log, headers={"Authorization": f"token {token}"})
        assert "started" in json.loads(body)
        assert _get(f"http://127.0.0.1:{port}/api/contents")[0] in (401, 403), "no token, no notebook"


@pytest.mark.parametrize("target", ["platform", "serving", "training-cpu", "training-cuda", "notebook"])
def test_each_image_carries_this_release_as_its_check_job_asks_it(images, target):
    """What `mlyard k8s apply`'s Job for the image runs (tasks/cluster_release.py), as its user on a read-only
    root: this checkout's release, said; another one refused with exit 3."""
    from mlyard.core.names import RELEASE

    with Container(images[target]) as box:
        command = ["python", "-m", "mlyard.tasks.cluster_release"]
        out = box.run(command, {"MLYARD_RELEASE": RELEASE, "MLYARD_IMAGE_FIELD": target})
        assert out.returncode == 0 and out.stdout.strip() == f"release: {target} carries mlyard {RELEASE}", out
        other = box.run(command, {"MLYARD_RELEASE": "9.9.9", "MLYARD_IMAGE_FIELD": target})
        assert other.returncode == 3 and "the install's manifests are mlyard 9.9.9's" in other.stdout, other
