"""The embedded Prefect server and what mlyard puts in it: starting the server, the prepared database
a fresh home starts from (made once per installation by `make install`), the work pools (the local
pool's warm command, the gpu pool's job template), the crash automation and the deployments.
`mlyard/stack.py` starts the rest of the stack around it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlyard.core.assets import infra
from mlyard.core.connection import healthy, point_prefect
from mlyard.core.errors import StackError
from mlyard.core.names import PLACES
from mlyard.core.settings import TELEMETRY_OFF_ENV, UNRESPONSIVE_AFTER_SECONDS, Settings
from mlyard.run_forms import EXAMPLES, RUN_FORM_EXAMPLES, run_form_example
from mlyard.tasks.processes import alive, stop_group
from mlyard.warm import SOCKET, warm_dir
from mlyard.warm.client import detach

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = infra("prefect.yaml")
GPU_TEMPLATE = infra("gpu-job-template.json")
CPU_TEMPLATE = infra("cpu-job-template.json")
LOCAL_POOL, GPU_POOL, CPU_POOL = "local", "gpu", "cpu"


def spawn(argv: list[str], log: Path, env: dict[str, str], cwd: Path | None = None, private: bool = True) -> int:
    """Start a process of the stack in its own session, its output appended to `log`. `private`: what it
    writes (databases, logs, statistics) is its user's alone (umask 077); the worker and the warm runner,
    whose flow runs write the user's outputs, keep the user's umask."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True, umask=0o077 if private else -1)
    return proc.pid


def spawn_module(settings: Settings, module: str, args: list[str], log: Path, env: dict[str, str],
                  private: bool = True) -> int:
    """`python -m MODULE ARGS` as a process of the stack (its own session, its output appended to `log`;
    `private` as for `spawn`): forked from the home's warm runner when one takes it, since the runner
    has already imported Prefect, MLflow and SQLAlchemy (3-5 s of CPU less for each of the mlyard API,
    the scheduler and the worker: bench/README.md, fourteenth session); else started afresh."""
    if settings.warm_starts:
        log.parent.mkdir(parents=True, exist_ok=True)
        pid = detach(warm_dir(settings.home_dir) / SOCKET, module, args, log, env, PROJECT_ROOT,
                     0o077 if private else None)
        if pid is not None:
            return pid
    return spawn([sys.executable, "-m", module, *args], log, env, cwd=PROJECT_ROOT, private=private)


def wait_healthy(api_url: str, pid: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(api_url):
            return
        if not alive(pid):
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise StackError("the Prefect server exited while starting:\n" + "\n".join(tail))
        time.sleep(0.5)
    raise StackError(f"the Prefect server did not answer at {api_url} within {timeout:.0f} s; see {log}")


def start_server(settings: Settings, env: dict[str, str], log: Path, blocks_registered: bool = False) -> int:
    """Prefect's server on the stack's port. `blocks_registered`: its database came from the prepared one,
    whose server already registered Prefect's block types; registering them again at start imports every
    Prefect collection (prefect-kubernetes, kopf) and hashes the block registry: 2-3 s of a cold start."""
    api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
    srv_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    if blocks_registered:
        srv_env.update({"PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
                        "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"})  # the memo would load them all first
    # The UI calls the API at this URL; without it the UI assumes port 4200.
    srv_env.update({"PREFECT_UI_API_URL": api_url, "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
                    "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_HOME": str(settings.prefect_home),
                    "PREFECT_SERVER_METRICS_ENABLED": "true",  # /api/metrics, behind the auth string as on a cluster
                    # the UI's files, made for this API URL, in this user's cache: Prefect's default writes them
                    # into the installed package, with this user's mode, which another account's stack cannot read
                    "PREFECT_UI_STATIC_DIRECTORY": str(_ui_folder())})
    # Prefect's app as `prefect server start` serves it, with a short Retry-After on a 503 (see the module)
    return spawn([sys.executable, "-m", "mlyard.prefect_server", "--host", "127.0.0.1",
                  "--port", str(settings.prefect_port)], log, srv_env)


def _ui_folder() -> Path:
    """Where the embedded server keeps the UI's files: this user's cache, one folder per Prefect version."""
    from importlib.metadata import version

    from mlyard.core.environment import cache_root

    return cache_root() / "prefect-ui" / version("prefect")


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
    """A Prefect database that already holds this installation's work pools, crash automation and local
    deployments (made once per installation by `make install`, with a temporary server): a fresh
    home starts from a copy, so a cold `mlyard up` only starts processes. Remade when what the
    deployments are made from changes (see `_deployments_digest`); `up` registers them itself when
    no copy fits (another MLYARD_IMAGE, an edited flow)."""
    import socket

    image = Settings().image
    digest = deployments_digest(image)
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
               "MLYARD_PROJECT_ROOT": str(PROJECT_ROOT), "MLYARD_IMAGE": image, "MLYARD_GPU_IMAGE": image,
               "MLYARD_TRAINING_CPU_IMAGE": image}
        log = Path(tmp) / "prefect-server.log"
        pid = start_server(settings, env, log)
        try:
            api_url = f"http://127.0.0.1:{port}/api"
            wait_healthy(api_url, pid, log, 240.0)
            point_prefect(settings, api_url)
            ensure_pools(lambda _: None, settings)
            ensure_crash_detection()
            register_deployments({**env, "PREFECT_API_URL": api_url}, pools=(LOCAL_POOL,))
        finally:
            stop_group(pid, 30.0)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        _copy_sqlite(settings.prefect_home / "prefect.db", partial)
        os.replace(partial, path)
    return path


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, its write-ahead log included (a file copy would lose
    what the log still holds), checked to hold every local deployment of prefect.yaml."""
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
    wanted = sum(d["work_pool"]["name"] == LOCAL_POOL for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"])
    if found != wanted:
        target.unlink(missing_ok=True)
        raise StackError(f"the prepared Prefect database holds {found} deployments, not the {wanted} of {PREFECT_YAML}")


def deployments_digest(image: str) -> str:
    """What the registered deployments are made from (prefect.yaml, the GPU job template, the image,
    this checkout, and the flows and specs their parameter schemas come from): re-registered only
    when it changes."""
    import hashlib

    h = hashlib.sha256(PREFECT_YAML.read_bytes() + GPU_TEMPLATE.read_bytes() + CPU_TEMPLATE.read_bytes() + image.encode()
                       + str(PROJECT_ROOT).encode() + NO_WORKER_HERE.encode() + b"the local pool's deployments")
    for example in RUN_FORM_EXAMPLES.values():
        h.update(example.encode() + ((EXAMPLES / example).read_bytes() if (EXAMPLES / example).is_file() else b""))
    package = Path(__file__).parent
    for source in sorted([*(package / "flows").glob("*.py"), *(package / "core" / "specs").glob("*.py")]):
        h.update(source.name.encode() + source.read_bytes())
    return h.hexdigest()[:16]


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


def ensure_pools(echo=print, settings: Settings | None = None, pools: dict[str, tuple[str, dict]] | None = None,
                 limits: dict[str, int | None] | None = None) -> None:
    """Create the `local` process pool and the `gpu` and `cpu` Kubernetes pools (with mlyard's job
    templates) if missing; keep their templates as mlyard has them (the local pool's points at this
    home's warm runner). `pools`: other pools instead, as name -> (type, template) (a cluster's), with
    their concurrency `limits` (values.pool_concurrency; None: none)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    if pools is None:
        pools = {LOCAL_POOL: ("process", local_pool_template(settings or Settings())),
                 GPU_POOL: ("kubernetes", json.loads(GPU_TEMPLATE.read_text())),
                 CPU_POOL: ("kubernetes", json.loads(CPU_TEMPLATE.read_text()))}
    with get_client(sync_client=True) as client:
        for name, (kind, template) in pools.items():
            try:
                pool = client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template,
                                                       concurrency_limit=(limits or {}).get(name)))
                echo(f"created work pool '{name}' ({kind})")
                continue
            if pool.base_job_template != template or (limits is not None and pool.concurrency_limit != limits.get(name)):
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template, concurrency_limit=(
                    limits.get(name) if limits is not None else pool.concurrency_limit)))


# what the embedded stack adds to the description of a deployment on a Kubernetes pool: the Prefect UI
# shows it Not Ready (no worker polls that pool here), and a person should know why and what to use
NO_WORKER_HERE = (" On this machine no worker serves the {pool} pool (it runs Kubernetes Jobs; there is no "
                  "cluster here), so the Prefect UI shows this deployment Not Ready and its runs wait: use the "
                  "local deployment here, or see the README's 'Running on Kubernetes'.")


def register_deployments(env: dict[str, str], pools: tuple[str, ...], here: bool = False) -> None:
    """`prefect deploy --all` of infra/prefect.yaml's deployments on `pools` (a cluster's Prefect has no
    local pool; the embedded stack has the Kubernetes pools' only when Settings.cluster_pools asks).
    `here` (the embedded stack): the Kubernetes pools' deployments say in their description why they
    show Not Ready here (NO_WORKER_HERE)."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        doc = yaml.safe_load(PREFECT_YAML.read_text())  # anchors resolved
        doc["deployments"] = [d for d in doc["deployments"] if d["work_pool"]["name"] in pools]
        for d in doc["deployments"]:
            if d["work_pool"]["name"] == LOCAL_POOL and (example := run_form_example(d["name"])) is not None:
                d["parameters"] = example
            if here and d["work_pool"]["name"] != LOCAL_POOL:
                d["description"] = d.get("description", "") + NO_WORKER_HERE.format(pool=d["work_pool"]["name"])
        doc.pop("definitions", None)
        prefect_file = Path(tmp) / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        proc = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all",
                               "--prefect-file", str(prefect_file)],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError("registering deployments failed:\n" + (proc.stdout + proc.stderr)[-3000:])


CLUSTER_POOLS = "cluster-pools"  # the mark, in stack.json's digest, of the Kubernetes pools' deployments


def stack_deployments(env: dict[str, str], digest: str, registered: str | None, cluster: bool, echo=print) -> str:
    """The embedded stack's deployments made as wanted: the local ones of this checkout (`digest`), and
    the Kubernetes pools' only when `cluster` (Settings.cluster_pools), withdrawn when it was turned off.
    `registered`: what stack.json says is registered. Returns what is registered now."""
    wanted = f"{digest}+{CLUSTER_POOLS}" if cluster else digest
    if registered not in (digest, f"{digest}+{CLUSTER_POOLS}"):
        echo("registering deployments from infra/prefect.yaml ...")
        register_deployments(env, pools=(LOCAL_POOL,))
        withdraw_deployments((LOCAL_POOL, GPU_POOL, CPU_POOL), named=PLACES)  # as an older mlyard named them
    if cluster and registered != wanted:
        echo(f"registering the {GPU_POOL} and {CPU_POOL} pools' deployments too (MLYARD_CLUSTER_POOLS) ...")
        register_deployments(env, pools=(GPU_POOL, CPU_POOL), here=True)
    elif not cluster and registered != wanted and (n := withdraw_deployments((GPU_POOL, CPU_POOL))):
        echo(f"withdrew the {n} deployments of the {GPU_POOL} and {CPU_POOL} pools (MLYARD_CLUSTER_POOLS is off)")
    return wanted


def withdraw_deployments(pools: tuple[str, ...], named: tuple[str, ...] | None = None) -> int:
    """Delete the deployments of `pools` from the Prefect server this process points at (the embedded
    stack's Kubernetes pools' when Settings.cluster_pools is turned off), or only those `named` so (the
    names an older mlyard gave, its pools': `train/local` is `train/train-local` now): how many were deleted."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters as f

    names = f.DeploymentFilter(name=f.DeploymentFilterName(any_=list(named))) if named is not None else None
    with get_client(sync_client=True) as client:
        found = client.read_deployments(work_pool_filter=f.WorkPoolFilter(name=f.WorkPoolFilterName(any_=list(pools))),
                                        deployment_filter=names)
        for d in found:
            client.delete_deployment(d.id)
    return len(found)
