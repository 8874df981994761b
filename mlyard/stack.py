"""The embedded stack: a local Prefect server (on SQLite, or the embedded PostgreSQL: `database` in
core/settings.py), the `local` process pool with a worker,
the deployments from infra/prefect.yaml, the mlyard API (warm answers for the CLI's reads,
mlyard/service.py), the endpoint gateway and replica supervisor, the scheduler (tasks/scheduling.py) and (on request) the MLflow UI — all under `<home>`.

State lives in `<home>/stack.json` (pids, URLs); `down` ends each process group it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from typing import Any

from mlyard import stack_parts as parts
from mlyard import warm
from mlyard.core.connection import StackState, healthy, point_prefect, read_state
from mlyard.core.errors import MlyardError, SpecError, StackError
from mlyard.core.settings import Settings
from mlyard.postgres import start_postgres
from mlyard.prefect_setup import (
    CLUSTER_POOLS,
    PROJECT_ROOT,
    deployments_digest,
    ensure_crash_detection,
    ensure_pools,
    spawn,
    stack_deployments,
)
from mlyard.stack_state import make_private, one_at_a_time, write_state
from mlyard.stack_ui import start_mlflow_ui
from mlyard.tasks.processes import alive, stop_group, stop_groups


def ports(settings: Settings) -> dict[str, tuple[str, int]]:
    """The stack's listeners on this machine: part -> (the setting of its port, the port)."""
    first = settings.prefect_port
    return {"the Prefect server and UI": ("MLYARD_PREFECT_PORT", first),
            "the mlyard API": ("MLYARD_API_PORT", settings.service_port),
            "the gateway": ("MLYARD_GATEWAY_PORT", settings.gateway_port or first + 2),
            "the front door": ("MLYARD_DOOR_PORT", settings.door_port or first + 3),
            "the MLflow UI": ("MLYARD_MLFLOW_UI_PORT", settings.mlflow_ui_port)}


def check_ports(settings: Settings) -> None:
    """Refuse two parts of the stack on one port, naming both, before anything starts."""
    seen: dict[int, str] = {}
    for part, (setting, port) in ports(settings).items():
        if port in seen:
            raise SpecError(setting, port, f"a port of {part}'s own: {seen[port]} listens on {port} too "
                            "(set one of them to another port)")
        seen[port] = part


def up(settings: Settings, echo=print, start_timeout: float = 240.0) -> StackState:
    """Start (or confirm) the embedded stack. Idempotent: what already runs is kept."""
    check_ports(settings)
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
    point_prefect(settings, None)
    parts.choose_database(settings)
    (warm.warm_dir(settings.home_dir) / warm.STOPPING).unlink(missing_ok=True)  # a `down` that did not finish
    env = {**os.environ, **settings.engine_env(), "MLYARD_PROJECT_ROOT": str(PROJECT_ROOT)}
    env["MLYARD_IMAGE"] = env["MLYARD_GPU_IMAGE"] = env["MLYARD_TRAINING_CPU_IMAGE"] = settings.image  # prefect.yaml's
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    state = read_state(settings) or StackState(api_url=api_url, ui_url=f"http://127.0.0.1:{settings.prefect_port}")
    if settings.cluster_pools is not None:  # the Kubernetes pools' deployments: this home's choice, kept
        state.cluster_pools = settings.cluster_pools
    if not state.internal_token or state.mlflow_ui_port is None:  # written now: the gateway reads the token as it starts
        state.internal_token = state.internal_token or secrets.token_urlsafe(32)
        state.mlflow_ui_port = state.mlflow_ui_port or settings.mlflow_ui_port
        write_state(settings, state)
    logs = settings.home_dir / "logs"
    # 1. what runs already; nothing to do when everything does and the deployments are current
    running = parts.running(settings, state)
    digest = deployments_digest(env["MLYARD_IMAGE"])  # the local deployments' (the prepared database's)
    wanted = f"{digest}+{CLUSTER_POOLS}" if state.cluster_pools else digest
    if all(running.values()) and state.deployments == wanted:
        return state
    postgres: dict[str, object] = {}
    pg_thread = None
    if not running["postgres"]:  # it starts (initdb the first time: 2 s) while the rest is set up
        pg_thread = threading.Thread(target=start_postgres, args=(settings, postgres), name="mlyard-postgres")
        pg_thread.start()
        if settings.prefect_database_url:  # unless the stores' databases are in it
            pg_thread.join()
            parts.took_postgres(settings, state, postgres, echo)
            pg_thread = None
    # 2. the Prefect server, and every process pointed at it with its auth string
    if not running["prefect-server"]:
        parts.start_prefect_server(settings, state, env, digest, start_timeout, echo)
    env["PREFECT_API_URL"] = state.api_url
    if state.prefect_auth_string:  # every process the stack starts, and the flow runs they start, show it
        env["PREFECT_API_AUTH_STRING"] = state.prefect_auth_string
    env.update(settings.plain_http_env(state.api_url))
    point_prefect(settings, state.api_url)
    # 3. the warm runner (it imports while the rest starts), the gateway and replicas, pools and deployments
    if not running["warm-runner"]:
        state.pids["warm-runner"] = spawn([sys.executable, "-m", "mlyard.warm.server", str(settings.home_dir)],
                                           logs / "warm-runner.log", env, cwd=PROJECT_ROOT, private=False)
        state.logs["warm-runner"] = str(logs / "warm-runner.log")
    if not running["serving"]:
        parts.start_serving(settings, state, env, logs, echo)
    if configure or not running["prefect-server"]:
        ensure_pools(echo, settings)
        ensure_crash_detection()
        parts.ensure_gpu_slots(settings, echo)
    if state.deployments != wanted:
        state.deployments = stack_deployments(env, digest, state.deployments, state.cluster_pools, echo)
    write_state(settings, state)
    # 4. what the warm runner forks (the mlyard API, the scheduler, the local worker), PostgreSQL, the keeper
    if not running["warm-runner"]:
        parts.wait_runner(settings, state.pids["warm-runner"], echo)
    service_pid = parts.start_service(settings, state, env, logs) if not running["mlyard-api"] else 0
    if not running["scheduler"]:  # schedules' runs (tasks/scheduling.py); it reaches Prefect through stack.json
        parts.start_scheduler(settings, state, env, logs)
    if not running["worker"]:
        parts.start_worker(settings, state, env, logs, echo)
    if pg_thread is not None:
        pg_thread.join()
        parts.took_postgres(settings, state, postgres, echo)
    if not running["keeper"]:  # it restarts any of the above that dies (mlyard/keeper.py)
        state.pids["keeper"] = spawn([sys.executable, "-m", "mlyard.keeper"], logs / "keeper.log",
                                     {**env, "MLYARD_HOME": str(settings.home_dir)}, cwd=PROJECT_ROOT)
        state.logs["keeper"] = str(logs / "keeper.log")
    write_state(settings, state)
    if settings.projects_uri is None:  # the projects' storage, made here so that no run's umask makes it open
        (settings.home_dir / "projects").mkdir(mode=0o700, exist_ok=True)
    make_private(settings.home_dir)
    if not running["mlyard-api"]:
        parts.wait_service(state, service_pid, echo)
    return state


# the parts `up` starts (and the keeper restarts), besides the warm runner and the MLflow UI
PARTS = ("prefect-server", "worker", "mlyard-api", "replicas", "gateway", "scheduler", "postgres")


def dead_parts(settings: Settings, state: StackState) -> list[str]:
    """The parts of a running stack whose process is gone."""
    dead = [name for name in (*PARTS, "mlflow-ui") if name in state.pids and not alive(state.pids[name])]
    if settings.warm_starts and "warm-runner" in state.pids and warm.runner_pid(settings.home_dir) is None:
        dead.append("warm-runner")
    return dead


def health_urls(state: StackState) -> dict[str, str]:
    """Each running part that answers HTTP, with the URL `healthy` asks (its /health)."""
    urls = {"prefect-server": state.api_url, "mlyard-api": state.service_url,
            "gateway": state.gateway_url and state.gateway_url + "/mlyard", "mlflow-ui": state.mlflow_ui_url}
    return {name: url for name, url in urls.items() if url and name in state.pids and alive(state.pids[name])}


def unanswering(state: StackState, timeout: float) -> list[str]:
    """The parts that are alive but did not answer their health check within `timeout` seconds (asked at once)."""
    from concurrent.futures import ThreadPoolExecutor

    urls = health_urls(state)
    with ThreadPoolExecutor(max_workers=max(len(urls), 1)) as pool:
        answers = dict(zip(urls, pool.map(lambda url: healthy(url, timeout=timeout), urls.values())))
    return [name for name, answered in answers.items() if not answered]


def end_hung(state: StackState, name: str, echo) -> None:
    """End a part that is alive but does not answer, so that it is restarted as a dead one is. The worker
    alone is killed, not its group: the runs it started go on (mlyard/warm/client.py)."""
    pid = state.pids[name]
    if name == "worker":
        os.kill(pid, signal.SIGKILL)
    else:
        stop_group(pid, 5.0)
    echo(f"ended {name} (pid {pid}): alive but not answering")


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


def keep_keeper(settings: Settings, every_seconds: float = 2.0) -> None:
    """The keeper's own keeper (the mlyard API runs it in a thread): while the stack runs, a keeper that
    died is started again within seconds, with every other part that died (a gateway killed after it),
    through the same `up`, and the keeper's log says so. `down` holds the stack's lock while it stops the
    keeper: a stopped stack stays so."""
    import time

    def echo(line: str) -> None:
        with open(settings.home_dir / "logs" / "keeper.log", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} mlyard.service INFO {line}\n")

    while True:
        time.sleep(every_seconds)
        state = read_state(settings)
        pid = state.pids.get("keeper") if state is not None else None
        if pid is None:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)  # a keeper this process started: no zombie of it
        except ChildProcessError:
            pass
        if alive(pid):
            continue
        with one_at_a_time(settings.home_dir):
            state = read_state(settings)
            if state is None or alive(state.pids.get("keeper")):
                continue
            echo(f"the stack's keeper (pid {pid}) is gone: starting it again, and whatever died with it")
            _up(settings, echo, start_timeout=240.0, configure=False)


def tend_promotions(settings: Settings, echo) -> None:
    """A progressive promotion whose run ended without a verdict (the stack stopped under it, its run was
    killed or failed) is taken up by a new run at its step or rolled back (tasks/promotion_watch.py: the
    scheduler looks every few seconds; `up` once, on a stack started or already running)."""
    from mlyard.core.connection import connect
    from mlyard.tasks import promotion_watch

    try:
        connect(settings)  # an `up` that found everything running pointed Prefect nowhere yet
        from prefect import get_client

        with get_client(sync_client=True) as client:
            promotion_watch.watch(settings, client, echo)
    except MlyardError as exc:  # the stack is up all the same; the scheduler looks again within seconds
        echo(f"could not look at the promotions in progress: {exc}")


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
    stopping = warm.warm_dir(settings.home_dir) / warm.STOPPING  # the runs' clients: the runs end with the stack
    if stopping.parent.is_dir():
        stopping.touch()
    if alive(state.pids.get("keeper")) and stop_group(state.pids["keeper"], grace_seconds):  # first: it would
        echo(f"stopped keeper (pid {state.pids['keeper']})")  # start again what is being stopped
    # every part at once, sharing one grace period; then the Prefect server (the worker and the runs'
    # processes report their ends to it); PostgreSQL last (it may hold the others' databases; SIGINT
    # is its fast shutdown)
    last = ("prefect-server", "postgres")
    parts = {name: pid for name, pid in state.pids.items() if name not in (*last, "keeper") and alive(pid)}
    ended = set(stop_groups([(pid, signal.SIGTERM) for pid in parts.values()], grace_seconds))
    for name, sig in zip(last, (signal.SIGTERM, signal.SIGINT)):
        if name in state.pids and alive(state.pids[name]):
            parts[name] = state.pids[name]
            ended |= set(stop_groups([(parts[name], sig)], grace_seconds))
    stopped = [name for name, pid in parts.items() if pid in ended]
    for name in stopped:
        echo(f"stopped {name} (pid {parts[name]})")
    link = settings.pgsocket_dir  # the short link to PostgreSQL's socket folder, if its path needed one
    if "postgres" in stopped and link.is_symlink() and link.lstat().st_uid == os.geteuid():
        link.unlink()
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


def _shown(url: str) -> str:
    """A database URL as status prints it: its password, if any, left out."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True) if "://" in url and "@" in url else url
    except Exception:  # noqa: BLE001 - not a database URL (an MLflow server's): as it is
        return url


def _walls(mode: str) -> str:
    """Where the code users bring runs here (tasks/sandbox.py), as status says it."""
    from mlyard.tasks.sandbox import refusal

    if mode == "off":
        return "unsandboxed: MLYARD_SANDBOX is off"
    reason = refusal()
    return f"in a sandbox (bubblewrap; MLYARD_SANDBOX={mode})" if reason is None else f"unsandboxed: {reason}"


def status(settings: Settings) -> dict:
    state = read_state(settings)
    out: dict[str, Any] = {"home": str(settings.home_dir), "running": False, "processes": {},
           "prefect_ui": None, "prefect_api": settings.prefect_api_url, "mlflow_tracking_uri": _shown(settings.mlflow_uri),
           "mlflow_ui": None, "mlyard_api": None, "dashboard": None, "gateway": None,
           "catalog": _shown(settings.catalog_db_url), "user_code": _walls(settings.sandbox)}
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
            out["prefect_ui_for_members"] = f"{settings.door_url} (sign in with an API key)"
            if state.internal_token:  # its own read-only key: the page opens in a browser, nothing else does
                from mlyard.core.connection import dashboard_key

                key = dashboard_key(state.internal_token)
                out["dashboard"] = f"{state.service_url}/dashboard?key={key}"
                out["mlyard_api_docs"] = f"{state.service_url}/docs?key={key}"  # read-only: its calls need the token
        if state.gateway_url and state.pids.get("gateway") and alive(state.pids["gateway"]):
            out["gateway"] = state.gateway_url
        if state.mlflow_ui_url and state.pids.get("mlflow-ui") and alive(state.pids["mlflow-ui"]):
            out["mlflow_ui"] = state.mlflow_ui_url
            out["mlflow_ui_login"] = "`mlyard ui mlflow` prints the user and password"
    return out
