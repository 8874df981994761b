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
from contextlib import contextmanager
from pathlib import Path

import pytest

# A warning raised by mlyard's own code is an error in the tests.
warnings.filterwarnings("error", module=r"(mlyard|flows|tasks|tuning|registry|schedules|serving)(\..*)?$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A user's project directory: the platform's home is its `.mlyard`, as `mlyard up` makes it there, so
# a fresh process started in USER_DIR with none of the variables below finds the running stack.
# One stack for the whole run: pytest (xdist's controller under `-n`) makes the directory and picks the
# ports when it imports this module, before it starts its workers; they inherit them through
# MLYARD_TEST_SHARED and take them over, so every worker's tests talk to the same stack (see `stack`).
if shared := os.environ.get("MLYARD_TEST_SHARED"):
    USER_DIR, _PORT, _API_PORT, _GATEWAY_PORT = Path(shared.split(":")[0]), *map(int, shared.split(":")[1:])
else:
    USER_DIR, _PORT, _API_PORT, _GATEWAY_PORT = Path(tempfile.mkdtemp(prefix="mlyard-test-")), free_port(), \
        free_port(), free_port()
    os.environ["MLYARD_TEST_SHARED"] = f"{USER_DIR}:{_PORT}:{_API_PORT}:{_GATEWAY_PORT}"
_HOME = USER_DIR / ".mlyard"
_OWNER = not os.environ.get("PYTEST_XDIST_WORKER")  # the process that made USER_DIR stops the stack and removes it
os.environ.update({
    "MLYARD_HOME": str(_HOME),
    "MLYARD_PREFECT_PORT": str(_PORT),
    "MLYARD_API_PORT": str(_API_PORT),
    "MLYARD_GATEWAY_PORT": str(_GATEWAY_PORT),
    "MLYARD_AUTOSCALE_INTERVAL": "1",  # the gateway's autoscaling passes, every second in the tests
    # the scheduler cancels a run that no worker started within 12 s of its slot (default 600 s), so the
    # tests see a never-started run give its concurrency slot back
    "MLYARD_SCHEDULE_START_TIMEOUT_SECONDS": "12",
    "MLYARD_CACHE_DIR": str(USER_DIR / "cache"),  # compiled models and LLM conversions, fresh for each run
    # Prefect's API auth string on: every test then takes the path of a stack whose Prefect API answers
    # only the platform's processes and its user's commands (test_stack.py checks the refusal)
    "MLYARD_PREFECT_AUTH": "true",
    "PREFECT_HOME": str(_HOME / "prefect"),
    "PREFECT_API_URL": f"http://127.0.0.1:{_PORT}/api",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
})
for key in ("MLYARD_PREFECT_API_URL", "MLYARD_MLFLOW_TRACKING_URI", "MLYARD_CATALOG_URL", "MLFLOW_TRACKING_URI"):
    os.environ.pop(key, None)
(_HOME / "prefect").mkdir(parents=True, exist_ok=True)


def pytest_collection_finish(session):
    """Prefect binds its console log handler to the sys.stderr of the moment it sets up logging (its
    first flow run): set it up before the first test, so that a test running the CLI in process
    (typer's CliRunner swaps stderr for a buffer it later closes) does not leave the handler writing to
    a closed buffer for later tests. Only when a collected test uses the stack: pure tests never import
    Prefect."""
    if any({"stack", "platform", "settings"} & set(getattr(item, "fixturenames", ())) for item in session.items):
        from prefect.logging.configuration import setup_logging

        setup_logging()


# Seconds each of the longest test files took in a full run on a 2-core machine (bench/README.md, the
# eleventh session). `make test` hands files to its workers in the order of the collection
# (`--no-loadscope-reorder`; xdist's own order puts the files with the fewest tests last, and those are
# often the longest: one worker then ran a single long file alone at the end), and this puts the
# longest first, so that the workers finish together.
LONGEST_FILES = {
    "flows/test_rag.py": 130, "flows/test_tuning.py": 114, "infra/test_multinode_job.py": 108,
    "flows/test_endpoint.py": 101, "test_stack.py": 96, "flows/test_pipeline_run.py": 92, "test_user_paths.py": 82,
    "schedules/test_scheduler.py": 72, "flows/test_batch_inference.py": 66, "infra/test_k8s_install.py": 62,
    "tasks/test_rag_quality.py": 52, "mlyard/test_warm.py": 52, "flows/test_endpoint_sync.py": 44,
    "infra/test_kueue_trials.py": 43, "serving/test_server.py": 40, "infra/test_batch_pods.py": 40,
    "flows/test_promotion.py": 60, "serving/test_custom.py": 38, "flows/test_notebook.py": 37,
    "flows/test_training.py": 37,
    "infra/test_kubernetes_worker.py": 37, "browser/test_pages.py": 34, "infra/test_scheduler_lease.py": 32,
    "serving/test_generative.py": 28,
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
    """After the last worker: the owner (pytest, or xdist's controller) stops the stack if a test started
    it, and removes USER_DIR unless the home is to be kept."""
    if not _OWNER:
        return
    if (_HOME / "stack.json").is_file():
        from core.settings import Settings
        from mlyard import stack as stack_mod

        stack_mod.down(Settings(), echo=lambda *_: None)
    if not os.environ.get("MLYARD_KEEP_TEST_HOME"):  # set it to look at the logs of a failed run
        import shutil

        shutil.rmtree(USER_DIR, ignore_errors=True)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def settings():
    from core.settings import Settings

    return Settings()


@pytest.fixture(scope="session")
def stack(settings):
    """The embedded stack, started once for the whole run: Prefect server, local pool + worker,
    deployments. `mlyard up` is idempotent and one at a time: the first worker to get here starts it (the
    others wait) and each later one finds it up. Never in the middle of another test's turn alone (below).
    It is stopped after the last worker (pytest_unconfigure)."""
    from mlyard import stack as stack_mod

    with _Turns() as turns:
        turns.shared()
        state = stack_mod.up(settings, echo=lambda *_: None)
    from tasks.processes import alive

    for name, pid in state.pids.items():  # a part that died while starting: say which, with its log's end
        log = Path(state.logs.get(name, "/nonexistent"))
        assert alive(pid), f"the stack's {name} died while starting: {log.read_text()[-3000:] if log.is_file() else ''}"
    yield state


# The tests of the stack's gpu pool: the emulated cluster's Kubernetes worker (`cluster`, tests/infra/conftest.py)
# takes every run queued on that pool and `cluster` cancels the ones left queued, while other tests leave
# runs queued there on purpose (schedules on train/gpu, a submitted GPU training). Their files are one unit of
# work for xdist: one worker runs them one after the other (pytest_xdist_make_scheduler below).
GPU_POOL_FILES = ("infra/test_multinode_job.py", "infra/test_kueue_trials.py", "infra/test_kubernetes_worker.py",
                  "infra/test_batch_pods.py", "infra/test_scheduler_lease.py", "infra/test_gpu_requests.py",
                  "infra/test_notebook_cluster.py", "schedules/test_scheduler.py")


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (as `make test` runs it), with GPU_POOL_FILES as one file."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "the gpu pool's tests" if file.removeprefix("tests/") in GPU_POOL_FILES else file

    return Scheduling(config, log)


class _Turns:
    """Turns on the stack every worker shares, as file locks in USER_DIR: every test on the stack holds
    `.stack.lock` shared; a test that takes a part of the stack away for a while (kills the gateway,
    PostgreSQL or the warm runner) holds it exclusive for that while only (`stack_alone`). A turnstile
    first, so that one waiting for its turn alone is not passed by the tests that start meanwhile. The
    tests that take the stack's GPU slots hold `.gpu.lock`, one at a time."""

    def __enter__(self):
        self._files = [open(USER_DIR / name, "a") for name in (".turnstile.lock", ".stack.lock", ".gpu.lock")]
        self._gate, self._whole, self._gpus = self._files
        return self

    def __exit__(self, *exc):
        for f in self._files:  # the locks go with their files
            f.close()

    def _through_gate(self, mode: int) -> None:
        import fcntl

        fcntl.flock(self._gate, fcntl.LOCK_EX)
        fcntl.flock(self._whole, mode)
        fcntl.flock(self._gate, fcntl.LOCK_UN)

    def shared(self) -> None:
        import fcntl

        self._through_gate(fcntl.LOCK_SH)

    def gpus(self) -> None:
        import fcntl

        fcntl.flock(self._gpus, fcntl.LOCK_EX)

    @contextmanager
    def alone(self):
        """The stack to this test alone for the block: the shared hold is given up first (two tests
        waiting to be alone would otherwise each hold what the other waits for), then taken exclusive
        through the turnstile, and made shared again after the block."""
        import fcntl

        fcntl.flock(self._whole, fcntl.LOCK_UN)
        self._through_gate(fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._whole, fcntl.LOCK_SH)


@pytest.fixture(autouse=True)
def stack_turn(request):
    """Every test on the stack holds its turn shared (see _Turns); the emulated cluster's tests and those
    marked `@pytest.mark.stack_turn("gpu")` hold the GPU slots' turn too."""
    if not {"stack", "platform", "settings"} & set(request.fixturenames):
        yield None
        return
    mark = request.node.get_closest_marker("stack_turn")
    with _Turns() as turns:
        if (mark and mark.args[0] == "gpu") or "cluster" in request.fixturenames:
            turns.gpus()
        turns.shared()
        yield turns


@pytest.fixture
def stack_alone(stack_turn):
    """`with stack_alone():` around what takes a part of the stack away (kills the gateway, PostgreSQL or
    the warm runner): no other test runs on the stack meanwhile."""
    return stack_turn.alone


@pytest.fixture(scope="session")
def platform(settings, stack):
    from flows.platform import Platform

    return Platform(settings)


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
    from core.settings import Settings

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
    from core.connection import read_state
    from core.settings import Settings

    state = read_state(Settings())
    allowed = before | set(state.pids.values() if state else [])
    deadline = time.monotonic() + 10
    while (left := _children() - allowed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"child processes outlived the test: {sorted(left)}"
