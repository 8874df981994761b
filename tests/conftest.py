"""Shared fixtures: real engines only.

The environment is set here, at import, because Prefect reads its settings once when imported:
every test talks to one real Prefect server (plus a process worker) started by `mlyard up` in a
temporary home, MLflow on SQLite in that home, and an S3 API server (moto) on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from pathlib import Path

import pytest
from controlplane import free_port  # noqa: F401 - one helper for every test (tests/ is on sys.path)

# A warning raised by mlyard's own code is an error in the tests.
warnings.filterwarnings("error", module=r"(mlyard|flows|tasks|tuning|registry|schedules|serving)(\..*)?$")


def marked(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` as one of its words: a script and what it started,
    seen from outside its sandbox (whose PIDs and files are its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if marker.encode() in words and state != "Z":
                found.append(int(entry.name))
    return found


def flow_of(pid: int) -> int:
    """The process that started the sandbox `pid` runs in (the flow run's): the first ancestor above
    bubblewrap's, or the parent where there is no sandbox."""
    import psutil

    ancestors = psutil.Process(pid).parents()
    walls = [i for i, p in enumerate(ancestors) if p.name() == "bwrap"]
    return ancestors[max(walls) + 1 if walls else 0].pid


def all_gone(marker: str, within: float = 15.0) -> bool:
    """No process marked `marker` is left within `within` seconds."""
    import time

    deadline = time.monotonic() + within
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not marked(marker)


# A user's project directory: the platform's home is its `.mlyard`, as `mlyard up` makes it there, so
# a fresh process started in USER_DIR with none of the variables below finds the running stack.
USER_DIR = Path(tempfile.mkdtemp(prefix="mlyard-test-"))
_HOME = USER_DIR / ".mlyard"


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each held bound until all are found (a port freed at once can be handed out
    again: a worker's stack once had its gateway and its front door on the same port, and every test erred)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


_PORT, _API_PORT, _GATEWAY_PORT, _DOOR_PORT, _MLFLOW_UI_PORT = _free_ports(5)
os.environ.update({
    "MLYARD_HOME": str(_HOME),
    "MLYARD_PREFECT_PORT": str(_PORT),
    "MLYARD_API_PORT": str(_API_PORT),
    "MLYARD_GATEWAY_PORT": str(_GATEWAY_PORT),
    "MLYARD_DOOR_PORT": str(_DOOR_PORT),
    "MLYARD_MLFLOW_UI_PORT": str(_MLFLOW_UI_PORT),  # the stack keeps it: a fresh shell's `up` or `ui mlflow` uses it
    "MLYARD_AUTOSCALE_INTERVAL": "1",  # the gateway's autoscaling passes, every second in the tests
    # the scheduler cancels a run that no worker started within 12 s of its slot (default 600 s), so the
    # tests see a never-started run give its concurrency slot back
    "MLYARD_SCHEDULE_START_TIMEOUT_SECONDS": "12",
    "MLYARD_CACHE_DIR": str(USER_DIR / "cache"),  # compiled models and LLM conversions, fresh for each run
    "PREFECT_HOME": str(_HOME / "prefect"),
    "PREFECT_API_URL": f"http://127.0.0.1:{_PORT}/api",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
})
for key in ("MLYARD_PREFECT_API_URL", "MLYARD_MLFLOW_TRACKING_URI", "MLYARD_CATALOG_URL", "MLFLOW_TRACKING_URI"):
    os.environ.pop(key, None)
(_HOME / "prefect").mkdir(parents=True, exist_ok=True)


# tests/images build the images (buildah, minutes): `make images` runs them, `make test` does not
collect_ignore = [] if os.environ.get("MLYARD_IMAGE_TESTS") else ["images"]


def pytest_collection_finish(session):
    """Prefect binds its console log handler to the sys.stderr of the moment it sets up logging (its
    first flow run): set it up before the first test, so that a test running the CLI in process
    (typer's CliRunner swaps stderr for a buffer it later closes) does not leave the handler writing to
    a closed buffer for later tests. Only when a collected test uses the stack: pure tests never import
    Prefect."""
    if any({"stack", "platform", "settings"} & set(getattr(item, "fixturenames", ())) for item in session.items):
        from prefect.logging.configuration import setup_logging

        setup_logging()


@pytest.hookimpl(trylast=True)  # after pytest's own teardown: the file's fixtures are gone by then
def pytest_runtest_teardown(item, nextitem):
    """At the end of each test file, what this process still holds (the libraries its tests imported, the
    caches they filled) leaves the collector's full passes, as the stack fixture does with what starting
    the stack imported: a worker then no longer scans it all again, 0.3-0.5 s a pass, after every test
    that allocates much (a Kubernetes schema read, a million parsed rows). The young generations are
    collected first, so that only what survived them is frozen. The infra files serially: the collector
    5.3 -> 2.8 CPU-s (bench/README.md, twenty-first session)."""
    if nextitem is None or getattr(nextitem, "module", None) is not getattr(item, "module", None):
        import gc

        gc.collect(1)
        gc.freeze()


# Seconds each of the longest test files took in a full run on a 2-core machine (bench/README.md, the
# eleventh session). `make test` hands files to its workers in the order of the collection
# (`--no-loadscope-reorder`; xdist's own order puts the files with the fewest tests last, and those are
# often the longest: one worker then ran a single long file alone at the end), and this puts the
# longest first, so that the workers finish together.
LONGEST_FILES = {
    "flows/test_rag.py": 130, "flows/test_tuning.py": 114, "infra/test_multinode_job.py": 400,
    "flows/test_endpoint.py": 160, "test_stack.py": 96, "flows/test_pipeline_run.py": 92, "test_user_paths.py": 82,
    "schedules/test_scheduler.py": 72, "flows/test_batch_inference.py": 66, "infra/test_k8s_install.py": 400,
    "infra/test_walk.py": 105, "infra/test_uploads.py": 100, "mlyard/test_workstation.py": 54,
    "tasks/test_rag_quality.py": 52, "mlyard/test_warm.py": 52, "flows/test_endpoint_sync.py": 44,
    "infra/test_kueue_trials.py": 125, "infra/test_project_queues.py": 60, "serving/test_server.py": 40, "infra/test_batch_pods.py": 120,
    "flows/test_promotion.py": 60, "serving/test_custom.py": 38, "flows/test_notebook.py": 37,
    "flows/test_training.py": 37,
    "infra/test_kubernetes_worker.py": 230, "browser/test_prefect_and_mlflow.py": 110, "browser/test_console_pages.py": 45,
    "browser/test_forms_and_schedules.py": 40, "infra/test_leases.py": 95, "infra/test_rolling_restart.py": 520,
    "infra/test_worker_rollout.py": 150, "infra/test_node_drain.py": 170, "infra/test_notebook_cluster.py": 150,
    "serving/test_generative.py": 28, "test_backup.py": 90, "test_crash_detection.py": 135, "infra/test_run_waits.py": 90,
    "infra/test_upgrade.py": 160, "infra/test_pipeline_cluster.py": 75, "infra/test_endpoint_logs.py": 45,
    "infra/test_rag_cluster.py": 150, "infra/test_cluster_backup.py": 150,
}


def pytest_collection_modifyitems(session, config, items):
    """The longest files first (see LONGEST_FILES); the rest in their usual order after them."""
    root = Path(__file__).resolve().parent

    def seconds(item) -> int:
        try:
            return LONGEST_FILES.get(Path(str(item.path)).resolve().relative_to(root).as_posix(), 0)
        except ValueError:
            return 0

    items.sort(key=lambda item: -seconds(item))  # a stable sort: tests keep their order within a file


def pytest_unconfigure(config):
    """Every process that imported this module made a USER_DIR (xdist's controller too, which runs no
    test): remove it, unless the home is to be kept (the stack fixture removes a worker's own)."""
    if not os.environ.get("MLYARD_KEEP_TEST_HOME"):
        import shutil

        shutil.rmtree(USER_DIR, ignore_errors=True)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def settings():
    from mlyard.core.settings import Settings

    return Settings()


@pytest.fixture(scope="session")
def stack(settings):
    """The embedded stack, started once: Prefect server, local pool + worker, deployments. It registers the
    Kubernetes pools' deployments too (MLYARD_CLUSTER_POOLS, kept in its home), as a platform team that runs
    a Kubernetes worker against a cluster does: the Kubernetes tests run train/train-gpu, and the scheduler's make
    runs of it that no worker takes here."""
    import shutil

    from mlyard import stack as stack_mod

    state = stack_mod.up(settings.model_copy(update={"cluster_pools": True}), echo=lambda *_: None)
    from mlyard.tasks.processes import alive

    for name, pid in state.pids.items():  # a part that died while starting: say which, with its log's end
        log = Path(state.logs.get(name, "/nonexistent"))
        assert alive(pid), f"the stack's {name} died while starting: {log.read_text()[-3000:] if log.is_file() else ''}"
    import gc

    # What this process imported to start the stack (Prefect, MLflow, SQLAlchemy, the platform) lives as long
    # as the session: out of the collector's full passes, as the servers keep theirs (a worker's full passes
    # otherwise scanned all of it a few dozen times a run, 0.2-0.5 s each)
    gc.freeze()
    yield state
    stack_mod.down(settings, echo=lambda *_: None)
    if not os.environ.get("MLYARD_KEEP_TEST_HOME"):  # set it to look at the logs of a failed run
        shutil.rmtree(USER_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    """Kubernetes' own control plane (tests/controlplane.py), for this worker's session: etcd, kube-apiserver,
    kube-controller-manager and kube-scheduler, built by `make test` (tests/controlplane/build.sh)."""
    from controlplane import binaries_missing, start

    missing = binaries_missing()
    assert not missing, f"the control plane lacks {', '.join(missing)}: `make test` builds and installs them"
    plane = start(tmp_path_factory.mktemp("controlplane"))
    yield plane
    plane.close()


@pytest.fixture(scope="session")
def platform(settings, stack):
    from mlyard.flows.platform import Platform

    return Platform(settings)


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """`make(dest, context=256)`: a tiny random chat model (tests/serving/tiny_llm.py) copied to `dest`.
    It is built once for the whole run, whichever xdist worker asks first (each build imports torch and
    transformers: 7 CPU-seconds; three tests in three workers asked for one). A larger context is the same
    model with a larger `max_position_embeddings` (Llama's rotary positions have no weights)."""
    import fcntl
    import json
    import shutil
    import subprocess
    import sys

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-chat-model"

    def make(dest: Path, context: int = 256) -> Path:
        root.mkdir(exist_ok=True)
        built = root / "model"
        with open(root / "lock", "w") as lock:  # the other workers wait for the first one's build
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (built / "config.json").is_file():
                part = root / f"part-{os.getpid()}"
                subprocess.run([sys.executable, str(Path(__file__).parent / "serving" / "tiny_llm.py"), str(part)],
                               check=True, capture_output=True, timeout=300)
                part.rename(built)
        shutil.copytree(built, dest, dirs_exist_ok=True)
        config = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**config, "max_position_embeddings": context}, indent=2))
        return dest

    return make


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server mode) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_settings(s3_server, tmp_path):
    from mlyard.core.settings import Settings

    return Settings(s3_endpoint_url=s3_server, s3_access_key_id="test", s3_secret_access_key="test",
                    obs_scheme="http", nas_mounts={"nas-1": str(tmp_path / "nas")})


@pytest.fixture()
def s3_env(monkeypatch, s3_server):
    """Flows read settings from the environment, like a worker-run flow does."""
    monkeypatch.setenv("MLYARD_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("MLYARD_S3_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("MLYARD_S3_SECRET_ACCESS_KEY", "test")


@pytest.fixture()
def bucket(s3_settings):
    import uuid

    import boto3

    name = f"b-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny real MLflow models, saved once: `classifier` (logistic regression on 4 features, classes
    0/1/2), `regressor` (linear regression), and `slow` (a pyfunc that sleeps 30 s on a batch holding
    a row whose first feature is 999 and raises on one whose first feature is -999: for timeouts
    and failures), `many` (a classifier with 51 classes)."""
    import mlflow.pyfunc
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LinearRegression, LogisticRegression

    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4))
    y = np.digitize(X[:, 0] + 0.5 * X[:, 1], [-0.5, 0.5])
    req = ["scikit-learn"]
    mlflow.sklearn.save_model(LogisticRegression(max_iter=500).fit(X, y), root / "classifier", pip_requirements=req)
    mlflow.sklearn.save_model(LinearRegression().fit(X, 3 * X[:, 0] - X[:, 2] + 10), root / "regressor",
                              pip_requirements=req)
    Xm = rng.normal(size=(510, 4))
    mlflow.sklearn.save_model(LogisticRegression(max_iter=50).fit(Xm, np.arange(510) % 51), root / "many",
                              pip_requirements=req)
    code = root / "slow_model.py"
    code.write_text(
        "import time\n"
        "import numpy as np\n"
        "import mlflow.pyfunc\n"
        "class Slow(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        x = np.asarray(model_input, dtype=float)\n"
        "        if (x[:, 0] == -999).any():\n"
        "            raise ValueError('cannot score -999')\n"
        "        if (x[:, 0] == 999).any():\n"
        "            time.sleep(30)\n"
        "        time.sleep(0.02)\n"
        "        return (x[:, 0] > 0).astype(int)\n"
        "mlflow.models.set_model(Slow())\n")
    mlflow.pyfunc.save_model(root / "slow", python_model=str(code), pip_requirements=["numpy"])
    return {"classifier": root / "classifier", "regressor": root / "regressor", "slow": root / "slow",
            "many": root / "many", "X": X, "y": y}


@pytest.fixture()
def algorithm(tmp_path):
    """Write a small algorithm directory; returns a function (script text, name) -> directory."""

    def make(script: str, name: str = "algo", entry: str = "main.py", requirements: str | None = None) -> Path:
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        (d / entry).write_text(script)
        if requirements is not None:
            (d / "requirements.txt").write_text(requirements)
        return d

    return make


def _children() -> set[int]:
    me, found = str(os.getpid()), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if fields[1] == me and fields[0] != "Z":
                found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Leak guard: no child process that a test started outlives it, and no MLflow run is left active."""
    import sys
    import time

    before = _children()
    yield
    if "mlflow" in sys.modules:  # a test that never imported MLflow cannot have left a run active
        assert sys.modules["mlflow"].active_run() is None, "a test left an active MLflow run"
    from mlyard.core.connection import read_state
    from mlyard.core.settings import Settings

    state = read_state(Settings())
    allowed = before | set(state.pids.values() if state else [])
    deadline = time.monotonic() + 10
    while (left := _children() - allowed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"child processes outlived the test: {sorted(left)}"
