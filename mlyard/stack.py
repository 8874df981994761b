"""The embedded stack: a local Prefect server on SQLite, the `local` process pool with a worker,
the deployments from infra/prefect.yaml, the mlyard API (warm answers for the CLI's reads,
mlyard/service.py), the endpoint gateway and replica supervisor, the scheduler (tasks/scheduling.py) and (on request) the MLflow UI — all under `<home>`.

State lives in `<home>/stack.json` (pids, URLs); `down` ends each process group it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from core.connection import StackState, healthy, point_prefect, read_state
from core.errors import MlyardError, StackError
from core.settings import Settings
from mlyard import warm
from mlyard.postgres import start_postgres
from mlyard.prefect_setup import (
    CLUSTER_POOLS,
    LOCAL_POOL,
    PROJECT_ROOT,
    deployments_digest,
    empty_prefect_db,
    ensure_crash_detection,
    ensure_pools,
    prepared_db_path,
    spawn,
    spawn_module,
    stack_deployments,
    start_server,
    wait_healthy,
)
from mlyard.stack_state import make_private, one_at_a_time, write_state
from mlyard.stack_ui import start_mlflow_ui
from mlyard.warm.worker import POLL_SECONDS as WORKER_POLL_SECONDS
from tasks.processes import alive, stop_group, stop_groups


def up(settings: Settings, echo=print, start_timeout: float = 240.0) -> StackState:
    """Start (or confirm) the embedded stack. Idempotent: what already runs is kept."""
    if settings.prefect_api_url:
        raise StackError("MLYARD_PREFECT_API_URL points at a production Prefect server; "
                         "`mlyard up` only starts the embedded stack. Unset it to use one.")
    with one_at_a_time(settings.home_dir):
        state = _up(settings, echo, start_timeout)
    tend_promotions(settings, echo)
    return state


def _up(settings: Settings, echo, start_timeout: float, configure: bool = True) -> StackState:
    """`up` under its lock. `configure` False (the keeper restarting processes of a stack whose Prefect
    server lives): the pools, automation, GPU limit and deployments are as they were, not checked again."""
    home = settings.home_dir
    point_prefect(settings, None)
    env = {**os.environ, **settings.engine_env(), "MLYARD_PROJECT_ROOT": str(PROJECT_ROOT)}
    env["MLYARD_IMAGE"] = settings.image  # prefect.yaml renders the gpu deployments with it
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    state = read_state(settings) or StackState(api_url=api_url, ui_url=f"http://127.0.0.1:{settings.prefect_port}")
    if settings.cluster_pools is not None:  # the Kubernetes pools' deployments: this home's choice, kept
        state.cluster_pools = settings.cluster_pools
    if not state.internal_token:  # written now: the gateway reads it when it starts
        state.internal_token = secrets.token_urlsafe(32)
        write_state(settings, state)
    logs = home / "logs"

    server_up = bool(state.pids.get("prefect-server") and alive(state.pids["prefect-server"]) and healthy(state.api_url))
    worker_up = bool(state.pids.get("worker") and alive(state.pids["worker"]))
    service_up = bool(state.pids.get("mlyard-api") and alive(state.pids["mlyard-api"]))
    serving_up = all(state.pids.get(n) and alive(state.pids[n]) for n in ("replicas", "gateway"))
    scheduler_up = bool(state.pids.get("scheduler") and alive(state.pids["scheduler"]))
    warm_up = not settings.warm_starts or warm.runner_pid(home) is not None
    postgres_up = bool(settings.vector_store_url or (state.pids.get("postgres") and alive(state.pids["postgres"])))
    keeper_up = bool(state.pids.get("keeper") and alive(state.pids["keeper"]))
    digest = deployments_digest(env["MLYARD_IMAGE"])  # the local deployments' (the prepared database's)
    wanted = f"{digest}+{CLUSTER_POOLS}" if state.cluster_pools else digest
    if server_up and worker_up and service_up and serving_up and scheduler_up and postgres_up and warm_up \
            and keeper_up and state.deployments == wanted:
        return state  # already up, deployments current: nothing to do
    postgres: dict[str, object] = {}
    if not postgres_up:  # RAG vectors; it starts (initdb the first time: 2 s) while the rest is set up
        pg_thread = threading.Thread(target=start_postgres, args=(settings, postgres), name="mlyard-postgres")
        pg_thread.start()

    if not server_up:
        if healthy(api_url):
            raise StackError(f"something else already answers at {api_url}; stop it or set MLYARD_PREFECT_PORT")
        db = settings.prefect_home / "prefect.db"
        state.deployments = None
        prepared_copy = False
        if not db.exists():  # a fresh home: start from a database that is already migrated
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
        echo(f"starting the Prefect server on {state.ui_url} (database under {settings.prefect_home}) ...")
        # a new string for a new stack; a server restarted under a running one (the keeper) keeps the string
        # every running part holds
        if not (settings.prefect_auth and state.prefect_auth_string and state.pids.get("worker")):
            state.prefect_auth_string = f"mlyard:{secrets.token_urlsafe(24)}" if settings.prefect_auth else None
        server_env = {**env, "PREFECT_SERVER_API_AUTH_STRING": state.prefect_auth_string} \
            if state.prefect_auth_string else env
        pid = start_server(settings, server_env, logs / "prefect-server.log", blocks_registered=prepared_copy)
        state.pids["prefect-server"], state.logs["prefect-server"] = pid, str(logs / "prefect-server.log")
        write_state(settings, state)
        # The MLflow database and the catalog are made while the server migrates its own.
        stores = threading.Thread(target=_init_stores, args=(settings,), name="mlyard-init-stores")
        stores.start()
        try:
            wait_healthy(api_url, pid, logs / "prefect-server.log", start_timeout)
        finally:
            stores.join()
    env["PREFECT_API_URL"] = state.api_url
    if state.prefect_auth_string:  # every process the stack starts, and the flow runs they start, show it
        env["PREFECT_API_AUTH_STRING"] = state.prefect_auth_string
    env.update(settings.plain_http_env(state.api_url))
    point_prefect(settings, state.api_url)
    if not warm_up:  # it imports while the rest starts, and is warm by the first run
        state.pids["warm-runner"] = spawn([sys.executable, "-m", "mlyard.warm.server", str(home)],
                                           logs / "warm-runner.log", env, cwd=PROJECT_ROOT, private=False)
        state.logs["warm-runner"] = str(logs / "warm-runner.log")
    if not serving_up:
        _start_serving(settings, state, env, logs, echo)
    if configure or not server_up:
        ensure_pools(echo, settings)
        ensure_crash_detection()
        _ensure_gpu_slots(settings, echo)
    if state.deployments != wanted:
        state.deployments = stack_deployments(env, digest, state.deployments, state.cluster_pools, echo)
    write_state(settings, state)
    if not warm_up:  # the mlyard API, the scheduler and the worker are forked from it, its imports made
        _wait_runner(settings, state.pids["warm-runner"], echo)
    service_pid = 0
    if not service_up:  # it warms up (its first reads) while the rest is set up
        service_pid = _start_service(settings, state, env, logs)
    if not scheduler_up:  # schedules' runs (tasks/scheduling.py); it reaches Prefect through stack.json
        log = logs / "scheduler.log"
        state.pids["scheduler"] = spawn_module(settings, "tasks.scheduling", [], log,
                                                {**env, "MLYARD_HOME": str(settings.home_dir)})
        state.logs["scheduler"] = str(log)
        write_state(settings, state)
    if not worker_up:
        log = logs / "worker.log"
        # Prefect's process worker, woken by each flow run's SCHEDULED event rather than a poll four
        # times a second (mlyard/warm/worker.py): a local pool should feel immediate, and cost nothing idle.
        # (Prefect reads its settings at import: the safety-net poll is in the environment it starts with.)
        pid = spawn_module(settings, "mlyard.warm.worker", ["--pool", LOCAL_POOL, "--name", "mlyard-local"], log,
                            {"PREFECT_WORKER_QUERY_SECONDS": str(WORKER_POLL_SECONDS), **env}, private=False)
        state.pids["worker"], state.logs["worker"] = pid, str(log)
        write_state(settings, state)
        echo(f"started a worker on the '{LOCAL_POOL}' pool (log: {log})")
    if not postgres_up:
        pg_thread.join()
        if "error" in postgres:
            raise StackError(f"the embedded PostgreSQL (RAG vectors) did not start: {postgres['error']} "
                             f"(its log: {settings.pgdata_dir / 'log'})")
        state.pids["postgres"], state.vector_store_url = int(postgres["pid"]), str(postgres["url"])  # type: ignore[call-overload]
        state.logs["postgres"] = str(settings.pgdata_dir / "log")
        echo(f"PostgreSQL + pgvector (RAG vectors) runs under {settings.pgdata_dir}")
    if not keeper_up:  # it restarts any of the above that dies (mlyard/keeper.py)
        state.pids["keeper"] = spawn([sys.executable, "-m", "mlyard.keeper"], logs / "keeper.log",
                                     {**env, "MLYARD_HOME": str(home)}, cwd=PROJECT_ROOT)
        state.logs["keeper"] = str(logs / "keeper.log")
    write_state(settings, state)
    make_private(home)
    if not service_up:
        _wait_service(state, service_pid, echo)
    return state


# the parts `up` starts (and the keeper restarts), besides the warm runner and the MLflow UI
PARTS = ("prefect-server", "worker", "mlyard-api", "replicas", "gateway", "scheduler", "postgres")


def dead_parts(settings: Settings, state: StackState) -> list[str]:
    """The parts of a running stack whose process is gone."""
    dead = [name for name in (*PARTS, "mlflow-ui") if name in state.pids and not alive(state.pids[name])]
    if settings.warm_starts and "warm-runner" in state.pids and warm.runner_pid(settings.home_dir) is None:
        dead.append("warm-runner")
    return dead


def restart_dead(settings: Settings, echo=print) -> list[str] | None:
    """Start again the parts of the running stack that died, as `up` started them (the keeper's restart);
    what was dead, or None when the stack was stopped meanwhile."""
    with one_at_a_time(settings.home_dir):
        state = read_state(settings)
        if state is None:
            return None
        dead = dead_parts(settings, state)
        if not dead:
            return []
        echo(f"restarting what died: {', '.join(f'{n} (pid {state.pids.get(n)})' for n in dead)}")
        after = _up(settings, echo, start_timeout=240.0, configure=False)
    if "mlflow-ui" in dead:
        start_mlflow_ui(settings, echo)
    echo("restarted: " + ", ".join(f"{n} as pid {after.pids.get(n, warm.runner_pid(settings.home_dir))}" for n in dead))
    return dead


def tend_promotions(settings: Settings, echo) -> None:
    """A progressive promotion whose run ended without a verdict (the stack stopped under it, its run was
    killed or failed) is taken up by a new run at its step or rolled back (tasks/promotion_watch.py: the
    scheduler looks every few seconds; `up` once, on a stack started or already running)."""
    from core.connection import connect
    from tasks import promotion_watch

    try:
        connect(settings)  # an `up` that found everything running pointed Prefect nowhere yet
        from prefect import get_client

        with get_client(sync_client=True) as client:
            promotion_watch.watch(settings, client, echo)
    except MlyardError as exc:  # the stack is up all the same; the scheduler looks again within seconds
        echo(f"could not look at the promotions in progress: {exc}")


def _ensure_gpu_slots(settings: Settings, echo) -> None:
    """This machine's GPUs as the Prefect concurrency limit local runs take slots of (tasks/gpu_slots.py)."""
    from tasks import gpu_slots

    total = gpu_slots.slots(settings)
    if total:
        gpu_slots.ensure_limit(total)
        echo(f"{total} GPU slot(s) for local runs: Prefect concurrency limit {gpu_slots.LIMIT}")


def _wait_runner(settings: Settings, pid: int, echo, timeout: float = 60.0) -> None:
    """Wait for the warm runner to be ready, so the first flow run starts warm; if it does not come
    up, `up` still succeeds: runs then start cold."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        if warm.runner_pid(settings.home_dir) is not None:
            return
        time.sleep(0.1)
    echo(f"(the warm runner is not ready; flow runs start cold; see {settings.home_dir / 'logs' / 'warm-runner.log'})")


def _start_service(settings: Settings, state: StackState, env: dict[str, str], logs: Path) -> int:
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


def _start_serving(settings: Settings, state: StackState, env: dict[str, str], logs: Path, echo) -> None:
    """The replica supervisor (it keeps endpoint replicas running; they outlive it and the gateway) and
    the endpoint gateway, each started if not running."""
    run_env = {**env, "MLYARD_HOME": str(settings.home_dir)}
    if not (state.pids.get("replicas") and alive(state.pids["replicas"])):
        log = logs / "replicas.log"
        state.pids["replicas"] = spawn([sys.executable, "-m", "serving.replicas", "--home", str(settings.home_dir)],
                                        log, run_env, cwd=PROJECT_ROOT)
        state.logs["replicas"] = str(log)
    if not (state.pids.get("gateway") and alive(state.pids["gateway"])):
        url = settings.gateway_url
        if healthy(url + "/mlyard"):
            raise StackError(f"something else already answers at {url}; stop it or set MLYARD_GATEWAY_PORT")
        log = logs / "gateway.log"
        state.pids["gateway"] = spawn([sys.executable, "-m", "serving.gateway_main", "--port", url.rsplit(":", 1)[1]],
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


def _init_stores(settings: Settings) -> None:
    """Create the MLflow database and the catalog now, so a user's first command prints no migrations."""
    import logging

    from flows.platform import Platform

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    p = Platform(settings)
    p.tracking.client.search_experiments(max_results=1)
    p.catalog  # noqa: B018 (migrates on first use)
    for folder in _shared_folders(settings):
        folder.mkdir(mode=0o700, exist_ok=True)


def _shared_folders(settings: Settings) -> list[Path]:
    """The home's folders that several of the stack's processes and flow runs write into. Whichever of
    them made one first would give it its own umask (a flow run's is the user's, so 0755): `up` makes
    them first, the user's alone (make_private then covers the rest of the home)."""
    home = settings.home_dir
    folders = [home / "logs", home / "endpoints", home / "outputs", home / "serving", home / "promotions",
               home / "notebooks", home / "rags", home / "demo", settings.secrets_path,
               settings.runs_dir, settings.envs_dir, settings.pipeline_runs_dir]
    if not settings.mlflow_tracking_uri:  # the embedded MLflow's artifacts (models, plots)
        folders.append(settings.mlflow_artifact_root)
    return folders


def down(settings: Settings, echo=print, grace_seconds: float = 15.0) -> list[str]:
    """Stop every process the stack started (worker first, server last). Returns what was stopped."""
    if not settings.home_dir.is_dir():
        return []
    with one_at_a_time(settings.home_dir):
        return _down(settings, echo, grace_seconds)


def _down(settings: Settings, echo, grace_seconds: float) -> list[str]:
    state = read_state(settings)
    if state is None:
        return []
    if alive(state.pids.get("keeper")) and stop_group(state.pids["keeper"], grace_seconds):  # first: it would
        echo(f"stopped keeper (pid {state.pids['keeper']})")  # start again what is being stopped
    # every part at once, sharing one grace period; the Prefect server last (the worker and the
    # runs' processes report their ends to it)
    parts = {name: pid for name, pid in state.pids.items() if name not in ("prefect-server", "keeper") and alive(pid)}
    ended = set(stop_groups([(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
                             for name, pid in parts.items()], grace_seconds))
    if "prefect-server" in state.pids and alive(state.pids["prefect-server"]):
        parts["prefect-server"] = state.pids["prefect-server"]
        ended |= set(stop_groups([(parts["prefect-server"], signal.SIGTERM)], grace_seconds))
    stopped = [name for name, pid in parts.items() if pid in ended]
    for name in stopped:
        echo(f"stopped {name} (pid {parts[name]})")
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
           "mlflow_ui": None, "mlyard_api": None, "dashboard": None, "gateway": None,
           "catalog": settings.catalog_db_url}
    if state:
        out["processes"] = {n: {"pid": p, "alive": alive(p), "log": state.logs.get(n)} for n, p in state.pids.items()}
        runner = warm.runner_pid(settings.home_dir)
        if runner is not None and runner != state.pids.get("warm-runner"):
            out["processes"]["warm-runner"] = {"pid": runner, "alive": True, "log": state.logs.get("warm-runner")}
        if healthy(state.api_url) if state.api_url else False:
            out.update(running=True, prefect_ui=state.ui_url, prefect_api=state.api_url)
            out["prefect_ui_login"] = "`mlyard ui prefect` prints what the UI's login page asks for" \
                if state.prefect_auth_string else "none: MLYARD_PREFECT_AUTH=false opens the API to every local account"
        if state.service_url and state.pids.get("mlyard-api") and alive(state.pids["mlyard-api"]):
            out["mlyard_api"] = state.service_url
            if state.internal_token:  # its own read-only key: the page opens in a browser, nothing else does
                from core.connection import dashboard_key

                key = dashboard_key(state.internal_token)
                out["dashboard"] = f"{state.service_url}/dashboard?key={key}"
                out["mlyard_api_docs"] = f"{state.service_url}/docs?key={key}"  # read-only: its calls need the token
        if state.gateway_url and state.pids.get("gateway") and alive(state.pids["gateway"]):
            out["gateway"] = state.gateway_url
        if state.mlflow_ui_url and state.pids.get("mlflow-ui") and alive(state.pids["mlflow-ui"]):
            out["mlflow_ui"] = state.mlflow_ui_url
            out["mlflow_ui_login"] = "`mlyard ui mlflow` prints the user and password"
    return out
