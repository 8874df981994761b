"""How `mlyard up` (mlyard/stack.py) starts each part of the embedded stack, and what runs already: the
Prefect server (from the installation's prepared database), the gateway and the replica supervisor, the
mlyard API, the scheduler, the local pool's worker, PostgreSQL; and the stores and folders made first."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from mlyard import warm
from mlyard.core.connection import StackState, healthy
from mlyard.core.errors import StackError
from mlyard.core.home import DATABASE_FILE
from mlyard.core.settings import Settings
from mlyard.prefect_setup import (
    LOCAL_POOL,
    PROJECT_ROOT,
    empty_prefect_db,
    prepared_db_path,
    spawn,
    spawn_module,
    start_server,
    wait_healthy,
)
from mlyard.stack_state import sign_in_string, write_state
from mlyard.tasks import local_line
from mlyard.tasks.processes import alive
from mlyard.warm.worker import POLL_SECONDS as WORKER_POLL_SECONDS


def running(settings: Settings, state: StackState) -> dict[str, bool]:
    """Which of the stack's parts run now (`serving`: the replica supervisor and the gateway both)."""
    def up(name: str) -> bool:
        return bool(state.pids.get(name) and alive(state.pids[name]))

    return {"prefect-server": up("prefect-server") and healthy(state.api_url), "worker": up("worker"),
            "mlyard-api": up("mlyard-api"), "serving": up("replicas") and up("gateway"), "scheduler": up("scheduler"),
            "warm-runner": not settings.warm_starts or warm.runner_pid(settings.home_dir) is not None,
            "postgres": up("postgres") or (bool(settings.vector_store_url) and settings.embedded_database != "postgres"),
            "keeper": up("keeper")}


def start_prefect_server(settings: Settings, state: StackState, env: dict[str, str], digest: str,
                         start_timeout: float, echo) -> None:
    """The embedded Prefect server, started and healthy: a fresh home's database copied from the
    installation's prepared one (pools, automation and local deployments in it), the stores made while
    it migrates, a new auth string for a new stack (a server the keeper restarts keeps the running one)."""
    api_url, logs = f"http://127.0.0.1:{settings.prefect_port}/api", settings.home_dir / "logs"
    if healthy(api_url):
        raise StackError(f"something else already answers at {api_url}; stop it or set MLYARD_PREFECT_PORT")
    db = settings.prefect_home / "prefect.db"
    state.deployments = None
    prepared_copy = False
    if settings.prefect_database_url:  # the embedded PostgreSQL's: Prefect migrates it as it starts (6 s)
        env = {**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": settings.prefect_database_url}
    elif not db.exists():  # a fresh home: start from a database that is already migrated
        settings.prefect_home.mkdir(parents=True, exist_ok=True)
        prepared = prepared_db_path(digest)
        try:
            if prepared.is_file():  # this installation's pools, automation and deployments already in it
                shutil.copyfile(prepared, db)
                state.deployments, prepared_copy = digest, True
            else:
                shutil.copyfile(empty_prefect_db(echo), db)
        except (OSError, StackError) as exc:  # e.g. an installation we cannot write to: Prefect migrates
            echo(f"(no prepared Prefect database: {exc}; the server makes its own)")
    where = "the embedded PostgreSQL's prefect" if settings.prefect_database_url else f"under {settings.prefect_home}"
    echo(f"starting the Prefect server on {state.ui_url} (database {where}) ...")
    state.prefect_auth_string = sign_in_string(settings.home_dir) if settings.prefect_auth else None
    server_env = {**env, "PREFECT_SERVER_API_AUTH_STRING": state.prefect_auth_string} \
        if state.prefect_auth_string else env
    pid = start_server(settings, server_env, logs / "prefect-server.log", blocks_registered=prepared_copy)
    state.pids["prefect-server"], state.logs["prefect-server"] = pid, str(logs / "prefect-server.log")
    write_state(settings, state)
    import threading  # the MLflow database and the catalog are made while the server migrates its own

    stores = threading.Thread(target=init_stores, args=(settings,), name="mlyard-init-stores")
    stores.start()
    try:
        wait_healthy(api_url, pid, logs / "prefect-server.log", start_timeout)
    finally:
        stores.join()


def start_scheduler(settings: Settings, state: StackState, env: dict[str, str], logs: Path) -> None:
    log = logs / "scheduler.log"
    state.pids["scheduler"] = spawn_module(settings, "mlyard.tasks.scheduling", [], log,
                                            {**env, "MLYARD_HOME": str(settings.home_dir)})
    state.logs["scheduler"] = str(log)
    write_state(settings, state)


def start_worker(settings: Settings, state: StackState, env: dict[str, str], logs: Path, echo) -> None:
    """Prefect's process worker on the local pool, woken by each flow run's SCHEDULED event rather than a
    poll four times a second (mlyard/warm/worker.py): a local pool should feel immediate, and cost
    nothing idle. (Prefect reads its settings at import: the safety-net poll is in its environment.)"""
    log = logs / "worker.log"
    places = local_line.places(settings)
    pid = spawn_module(settings, "mlyard.warm.worker", ["--pool", LOCAL_POOL, "--name", "mlyard-local", "--places",
                                                         str(places), "--alive", str(worker_alive(settings))], log,
                       {"PREFECT_WORKER_QUERY_SECONDS": str(WORKER_POLL_SECONDS), **env}, private=False)
    state.pids["worker"], state.logs["worker"] = pid, str(log)
    write_state(settings, state)
    echo(f"started a worker on the '{LOCAL_POOL}' pool: {places} runs at once (settings local_runs; log: {log})")


def worker_alive(settings: Settings) -> Path:
    """The worker's heartbeat: a file it touches every 5 s while it is well (the keeper reads its age)."""
    return settings.home_dir / "logs" / "worker.alive"


def choose_database(settings: Settings) -> None:
    """Keep the home's choice of embedded database (core/settings.py: `database`) in <home>/database the
    first time, and refuse a choice the home was not made with: its runs, models and endpoints are in
    the other one."""
    kept = settings.home_dir / DATABASE_FILE
    if kept.is_file():
        chosen = kept.read_text().strip()
    else:  # a new home, or one from before the choice existed (SQLite: its Prefect database says so)
        made = (settings.prefect_home / "prefect.db").exists() or (settings.home_dir / "catalog.db").exists()
        chosen = "sqlite" if made else settings.database or "sqlite"
        tmp = kept.with_suffix(".tmp")
        tmp.write_text(chosen + "\n")
        tmp.chmod(0o600)
        tmp.replace(kept)
    if settings.database and settings.database != chosen:
        raise StackError(f"MLYARD_DATABASE={settings.database}, but the home {settings.home_dir} keeps its databases "
                         f"on {chosen} (its runs, models and endpoints are there): unset MLYARD_DATABASE, or use "
                         f"a new home for {settings.database} (MLYARD_HOME=...)")


def took_postgres(settings: Settings, state: StackState, postgres: dict[str, object], echo) -> None:
    """The embedded PostgreSQL that started alongside, recorded (StackError with its log when it did not)."""
    holds = "RAG vectors" if settings.embedded_database != "postgres" else "Prefect, MLflow, catalog, RAG vectors"
    if "error" in postgres:
        raise StackError(f"the embedded PostgreSQL ({holds}) did not start: {postgres['error']} "
                         f"(its log: {settings.pgdata_dir / 'log'})")
    state.pids["postgres"], state.vector_store_url = int(postgres["pid"]), str(postgres["url"])  # type: ignore[call-overload]
    state.logs["postgres"] = str(settings.pgdata_dir / "log")
    echo(f"PostgreSQL + pgvector ({holds}) runs under {settings.pgdata_dir}")


def ensure_gpu_slots(settings: Settings, echo) -> None:
    """This machine's GPUs as the Prefect concurrency limit local runs take slots of (tasks/gpu_slots.py)."""
    from mlyard.tasks import gpu_slots

    total = gpu_slots.slots(settings)
    if total:
        gpu_slots.ensure_limit(total)
        echo(f"{total} GPU slot(s) for local runs: Prefect concurrency limit {gpu_slots.LIMIT}")


def wait_runner(settings: Settings, pid: int, echo, timeout: float = 60.0) -> None:
    """Wait for the warm runner to be ready, so the first flow run starts warm; if it does not come
    up, `up` still succeeds: runs then start cold."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        if warm.runner_pid(settings.home_dir) is not None:
            return
        time.sleep(0.1)
    echo(f"(the warm runner is not ready; flow runs start cold; see {settings.home_dir / 'logs' / 'warm-runner.log'})")


def start_service(settings: Settings, state: StackState, env: dict[str, str], logs: Path) -> int:
    port = settings.service_port
    url = f"http://127.0.0.1:{port}"
    if healthy(url):
        raise StackError(f"something else already answers at {url}; stop it or set MLYARD_API_PORT")
    log = logs / "mlyard-api.log"
    pid = spawn_module(settings, "mlyard.service", ["--port", str(port)], log,
                        {**env, "MLYARD_HOME": str(settings.home_dir)})
    state.pids["mlyard-api"], state.logs["mlyard-api"], state.service_url = pid, str(log), url
    write_state(settings, state)
    return pid


def start_serving(settings: Settings, state: StackState, env: dict[str, str], logs: Path, echo) -> None:
    """The replica supervisor (it keeps endpoint replicas running; they outlive it and the gateway) and
    the endpoint gateway, each started if not running."""
    run_env = {**env, "MLYARD_HOME": str(settings.home_dir)}
    if not (state.pids.get("replicas") and alive(state.pids["replicas"])):
        log = logs / "replicas.log"
        state.pids["replicas"] = spawn([sys.executable, "-m", "mlyard.serving.replicas", "--home", str(settings.home_dir)],
                                        log, run_env, cwd=PROJECT_ROOT)
        state.logs["replicas"] = str(log)
    if not (state.pids.get("gateway") and alive(state.pids["gateway"])):
        url = settings.local_gateway_url
        if healthy(url + "/mlyard"):
            raise StackError(f"something else already answers at {url}; stop it or set MLYARD_GATEWAY_PORT")
        log = logs / "gateway.log"
        state.pids["gateway"] = spawn([sys.executable, "-m", "mlyard.serving.gateway_main", "--port", url.rsplit(":", 1)[1]],
                                       log, run_env, cwd=PROJECT_ROOT)
        state.logs["gateway"], state.gateway_url = str(log), url
        echo(f"the endpoint gateway listens on {url} (log: {log})")
    write_state(settings, state)


def wait_service(state: StackState, pid: int, echo, timeout: float = 90.0) -> None:
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


def init_stores(settings: Settings) -> None:
    """Create the MLflow database and the catalog now, so a user's first command prints no migrations."""
    import logging

    from mlyard.flows.platform import Platform
    from mlyard.registry.catalog import Catalog

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    Catalog(settings.catalog_db_url, upgrade=True).dispose()  # on one machine, `up` is the migration (registry/catalog.py)
    p = Platform(settings)
    p.tracking.client.search_experiments(max_results=1)
    for folder in shared_folders(settings):
        folder.mkdir(mode=0o700, exist_ok=True)


def shared_folders(settings: Settings) -> list[Path]:
    """The home's folders that several of the stack's processes and flow runs write into. Whichever of
    them made one first would give it its own umask (a flow run's is the user's, so 0755): `up` makes
    them first, the user's alone (make_private then covers the rest of the home)."""
    home = settings.home_dir
    folders = [home / "logs", home / "endpoints", home / "outputs", home / "serving", home / "promotions",
               home / "notebooks", home / "rags", home / "demo", home / "tensorboard", settings.secrets_path,
               settings.runs_dir, settings.envs_dir, settings.pipeline_runs_dir]
    if not settings.mlflow_tracking_uri:  # the embedded MLflow's artifacts (models, plots)
        folders.append(settings.mlflow_artifact_root)
    return folders
