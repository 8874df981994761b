"""An endpoint flow's steps: check a stage before any change, start its replicas, wait until they are
healthy, put them into the gateway's routing, drain and stop them, and roll back.

Locally a stage resource's replicas are `mlyard serve` processes that the supervisor of `mlyard up`
runs (tasks/replicas.py); the gateway routes to them once they are marked `routed` and it has reloaded.
On Kubernetes (any instance type other than `local`) a stage resource is a Deployment, a Service and
an HPA (tasks/endpoint_cluster.py). Arguments are narrow: names, ids, keys.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlyard.core.environment import MODEL_FILES, model_files_value
from mlyard.core.errors import (
    AlreadyExists,
    EndpointNotFound,
    ModelNotFound,
    NotFound,
    Protected,
    RoutingFailed,
    SpecError,
)
from mlyard.core.settings import Settings
from mlyard.core.specs.endpoint import StageSpec, SyncSpec, body_limit_args
from mlyard.registry.endpoints import Endpoints, Version
from mlyard.tasks import replicas as files
from mlyard.tasks.inference_config import CONFIG, folder_kind
from mlyard.tasks.served import Served, engine_folders

LOCAL = "local"
MAX_LOCAL_REPLICAS = 8  # the cap on one machine's replicas per stage (AI Toolkit's maximumInstanceCount)


def mlyard_bin() -> str:
    return str(Path(sys.executable).parent / "mlyard")


@task(name="check-stage", cache_policy=NO_CACHE)
def check_stage(endpoints: Endpoints, models: Any, stage: StageSpec, field: str, endpoint: str | None = None,
                new_endpoint: str | None = None) -> list[Version]:
    """Before any change: the endpoint exists (or its name is free), the stage name is free, every model
    version exists, and the stage fits where it runs. The resolved (name, version) of each resource."""
    if new_endpoint is not None:
        try:
            endpoints.get(new_endpoint)
            raise AlreadyExists("endpoint", new_endpoint)
        except EndpointNotFound:
            pass
    if endpoint is not None:
        view = endpoints.get(endpoint)
        if any(st["name"] == stage.name for st in view["stages"]):
            raise AlreadyExists(f"stage of endpoint {endpoint!r}", stage.name)
    versions: list[Version] = []
    for i, res in enumerate(stage.resources):
        try:
            info = models.resolve(res.model)
        except (ModelNotFound, NotFound) as exc:
            raise SpecError(f"{field}.resources[{i}].model", res.model,
                            f"a registered model version ({exc}); see `mlyard models list`") from None
        versions.append((info.name, info.version))
    if stage.instance_type == LOCAL:
        pods = sum(r.pods for r in stage.resources)
        if pods > MAX_LOCAL_REPLICAS:
            raise SpecError(f"{field}.resources[].pods", pods, f"at most {MAX_LOCAL_REPLICAS} replicas in all on "
                            "one machine (instance_type local)")
        for i, res in enumerate(stage.resources):
            if res.runtime is not None and res.runtime.variant in ("cmd", "nim") and not res.runtime.args:
                raise SpecError(f"{field}.resources[{i}].runtime.args", [], f"the command to run: {res.runtime.variant} "
                                "runs its image's own command, which only a cluster's pod has")
            engine = _engine_command(res.runtime.variant, res.runtime.args) if res.runtime is not None else None
            if res.runtime is not None and engine is not None and not shutil.which(engine):
                raise SpecError(f"{field}.resources[{i}].runtime", res.runtime.variant,
                                f"its engine on this machine's PATH ({engine} is not found): install it, or run the "
                                "stage on a cluster's node pool, where the variant's image has it")
    else:
        from mlyard.tasks.engine_images import engine_image
        from mlyard.tasks.kubernetes import cluster_client

        cluster_client(f"{field}.instance_type", stage.instance_type)  # refuses when no cluster is configured
        for i, (res, version) in enumerate(zip(stage.resources, versions)):
            if res.runtime is not None and res.runtime.variant != "custom" and not engine_image(
                    res.runtime.model_dump(), f"{version[0]}/{version[1]}"):
                raise SpecError(f"{field}.resources[{i}].runtime.image", None, f"an image: {res.runtime.variant} runs "
                                "its image's own command (name it here, in service-definition.toml or the values' "
                                "runtime_images)")
    return versions


def _engine_command(variant: str, args: list[str]) -> str | None:
    """The command a runtime variant's stage runs first on this machine (None: custom, mlyard's own)."""
    from mlyard.core.runtimes import VARIANTS

    found = VARIANTS.get(variant)
    if found is None:
        return None
    first = found.command[0] if found.command else (args[0] if args else None)
    return None if first is None or first.startswith("/models") else first


def local_replicas(home: Path, view: dict[str, Any], stage: str,
                   versions: dict[str, Served] | None = None) -> list[files.Wanted]:
    """The replicas of a stage's resources as the supervisor runs them (not routed yet). `versions` are
    each version's ("name/version") parameters and files: task=chat serves OpenAI's routes; serving_kind
    entry-script or model-folder serves pushed code. A version whose files are found runs in a sandbox
    (tasks/sandbox.py) that reads them and nothing else of the platform, its credential its own."""
    st = next(s for s in view["stages"] if s["name"] == stage)
    logs = Path(home) / "endpoints" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{view['name']}.jsonl"
    out = []
    for res in st["resources"]:
        name, version = res["model"].rsplit("/", 1)
        served = (versions or {}).get(res["model"]) or Served({})
        given = served.parameters
        kind = given.get(files.CODE_KIND)
        runtime = res.get("runtime")
        ref = f"models:/{name}/{version}"
        engine = None
        if runtime and runtime["variant"] != "custom":  # an inference engine runs the folder (serving/variants.py)
            kind = "model-folder"
            engine = _engine_command(runtime["variant"], runtime["args"])
            argv = [mlyard_bin(), "serve", ref, "--runtime", runtime["variant"],
                    "--service-port", "0", "--host", "127.0.0.1", *[f"--engine-arg={a}" for a in runtime["args"]],
                    *[f"--env={k}={v}" for k, v in runtime["environ"].items()]]
        elif kind == "model-folder":
            argv = [mlyard_bin(), "serve", ref, "--service-port", "0", "--host", "127.0.0.1"]
        elif kind == "entry-script":
            argv = [mlyard_bin(), "serve", ref, "--host", "127.0.0.1",
                    *(["--python", served.python] if served.python else [])]
        else:
            log.touch(mode=0o600)  # bound into the sandbox: it must be there
            argv = [mlyard_bin(), "serve", *(["--chat-model"] if given.get("task") == "chat" else []),
                    ref, "--host", "127.0.0.1", "--inference-log", str(log)]
        argv = [*argv, *body_limit_args(view.get("max_request_bytes"), Settings().max_request_bytes)]
        env = {"MLYARD_ENDPOINT_ID": str(view["id"]), "MLYARD_ENDPOINT_STAGE_ID": str(st["id"])}
        walls: dict[str, Any] = {}
        if served.path is not None:
            env[MODEL_FILES] = model_files_value(ref, served.path, name, version, given)
            environment = [str(Path(served.python).parent.parent)] if served.python else []  # a venv, read-only
            walls = {"reads": [served.path, *engine_folders(engine), *environment],
                     "walls": [str(log)] if kind is None else [], "compiled": served.compiled}
        for i in range(res["pods"]):
            out.append(files.Wanted(
                key=files.key_of(view["name"], stage, res["id"], i), endpoint=view["name"], stage=stage,
                resource_id=res["id"], index=i, model=name, argv=argv, health_path=files.health_path(kind), env=env,
                **walls))
    return out


def version_params(models: Any, view: dict[str, Any], stage: str) -> dict[str, dict[str, str]]:
    """Each of the stage's model versions' registered parameters, by "name/version"."""
    st = next(s for s in view["stages"] if s["name"] == stage)
    return {r["model"]: dict(models.get_version(*r["model"].rsplit("/", 1)).parameters) for r in st["resources"]}


@task(name="start-replicas", cache_policy=NO_CACHE)
def start_replicas(home: Path, replicas: list[files.Wanted]) -> list[str]:
    for w in replicas:
        files.want(home, w)
    return [w.key for w in replicas]


@task(name="wait-healthy", cache_policy=NO_CACHE)
def wait_healthy(home: Path, keys: list[str], timeout: float = 300.0) -> None:
    files.wait_healthy(home, keys, timeout)


def gateway(url: str, path: str, method: str = "GET", timeout: float = 30.0) -> dict[str, Any]:
    """A management route of the gateway (/mlyard/...), with the platform's internal credential."""
    from mlyard.core.connection import internal_headers
    from mlyard.core.settings import Settings

    req = urllib.request.Request(url + path, method=method, data=b"" if method == "POST" else None,
                                 headers=internal_headers(Settings()))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except OSError as exc:
        raise RoutingFailed(f"the gateway at {url} did not answer ({exc}); is `mlyard up` running?") from None


ROUTE_SETTLE_SECONDS = 30.0


@task(name="route", cache_policy=NO_CACHE)
def route(home: Path, gateway_url: str, endpoint: str, stage: str, keys: list[str]) -> None:
    """Put the replicas into routing and check that the gateway routes each one, healthy, within
    ROUTE_SETTLE_SECONDS: on a cluster, a Service's endpoints reach kube-proxy's rules a moment after its pods
    are ready (until then the gateway's probe through it is refused)."""
    files.route(home, keys, True)
    deadline = time.monotonic() + ROUTE_SETTLE_SECONDS
    while True:
        table = gateway(gateway_url, "/mlyard/reload", "POST")
        routed = table["endpoints"].get(endpoint, {}).get("stages", {}).get(stage, [])
        by_key = {r.get("key"): r for r in routed}
        missing = [k for k in keys if k not in by_key or by_key[k].get("status") != "HEALTHY"]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if missing:
        why = "; ".join(f"{k}: {by_key[k].get('reason') or by_key[k].get('status')}" if k in by_key else f"{k}: not routed"
                        for k in missing)
        raise RoutingFailed(f"the gateway did not take {endpoint}/{stage} into routing ({why})")


@task(name="drain", cache_policy=NO_CACHE)
def drain(gateway_url: str, endpoint: str, stage: str, timeout: float = 60.0, keys: list[str] | None = None) -> int:
    """Wait until no request is outstanding on the stage's replicas (or on those of `keys`), so their
    answers are not cut off; the requests still outstanding at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        table = gateway(gateway_url, "/mlyard/routes")
        replicas = [r for r in table["endpoints"].get(endpoint, {}).get("stages", {}).get(stage, [])
                    if keys is None or r.get("key") in keys]
        outstanding = sum(r["outstanding"] for r in replicas) + sum(
            n for k, n in table.get("draining", {}).items() if keys is not None and k in keys)
        if outstanding == 0 or time.monotonic() > deadline:
            return outstanding
        time.sleep(0.05)


@task(name="stop-replicas", cache_policy=NO_CACHE)
def stop_replicas(home: Path, gateway_url: str | None, keys: list[str], wait: bool = True) -> None:
    """Take the replicas out of routing, then stop them (the supervisor ends their processes)."""
    if not keys:
        return
    files.route(home, keys, False)
    if gateway_url is not None:
        try:
            gateway(gateway_url, "/mlyard/reload", "POST")
        except RoutingFailed:
            pass  # no gateway: nothing routes to them
    for key in keys:
        files.unwant(home, key)
    if wait:
        files.wait_stopped(home, keys)


def stage_keys(home: Path, endpoint: str, stage: str, view: dict[str, Any] | None = None) -> list[str]:
    """The keys the gateway routes a stage under: its local replicas, and (given the endpoint's view)
    the Services of its resources on a cluster."""
    services = [files.key_of(endpoint, stage, r["id"], 0) for st in (view or {}).get("stages", [])
                if st["name"] == stage for r in st["resources"] if r.get("service_url")]
    return [w.key for w in files.of_stage(home, endpoint, stage)] + services


def supervisor_running(home: Path) -> bool:
    """Whether the replica supervisor of `mlyard up` runs for this home."""
    import os

    try:
        state = json.loads((Path(home) / "stack.json").read_text())
        pid = state["pids"]["replicas"]
        os.kill(pid, 0)
        return True
    except (OSError, KeyError, ValueError):
        return False


# -- Code endpoints (AI Toolkit's deploy for inference) ------------------------------------------------

SKIPPED = (".git", "__pycache__", "*.pyc", ".venv", ".ipynb_checkpoints")  # never pushed
PARAMETERS = Path("infra") / "provision" / "inference.parameters.json"


@dataclass(frozen=True)
class CodeSource:
    folder: Path
    kind: str  # entry-script or model-folder
    entry_script: str
    max_replicas: int | None  # the spec's, else inference.parameters.json's maximumInstanceCount
    config: Path


@task(name="check-code", cache_policy=NO_CACHE)
def check_code(spec: SyncSpec, load_folder: Callable[[Path], Any]) -> CodeSource:
    """Before any change: the folder exists and holds what its kind needs (the entry script compiles; a
    model folder's definition reads with `load_folder`, the serving runtime's reader), and the replica
    cap is readable."""
    folder = Path(spec.source).expanduser().resolve()
    if not folder.is_dir():
        raise SpecError("--sync", spec.source, "a folder holding an entry script (score.py) or a model folder "
                        "(model-definition.yaml)")
    kind = spec.kind or folder_kind(folder)
    if kind == "model-folder":
        load_folder(folder)  # SpecError names the file, key and value
    else:
        script = folder / spec.entry_script
        if not script.is_file():
            raise SpecError("--entry-script", spec.entry_script, f"a Python file in {folder} with init() and run() "
                            "(or a model folder with model-definition.yaml)")
        try:
            compile(script.read_text(), str(script), "exec")
        except SyntaxError as exc:
            raise SpecError("--entry-script", spec.entry_script,
                            f"Python that compiles (line {exc.lineno}: {exc.msg})") from None
    cap = spec.max_replicas
    params = folder / PARAMETERS
    if cap is None and params.is_file():
        try:
            value = json.loads(params.read_text())["parameters"]["maximumInstanceCount"]["value"]
        except (ValueError, KeyError, TypeError):
            value = None
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
                raise SpecError(f"{PARAMETERS}: parameters.maximumInstanceCount.value", value,
                                "a whole number from 1 to 100 (or leave it out)")
            cap = value
    config = Path(spec.config).expanduser().resolve() if spec.config else folder / CONFIG
    if config.exists():  # its other keys are kept: it must read, so nothing in it is lost
        try:
            if not isinstance(json.loads(config.read_text()), dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            raise SpecError("--config", str(config), f"a JSON object that can be read ({exc}); fix or remove it") \
                from None
    return CodeSource(folder, kind, spec.entry_script, cap, config)


@dataclass(frozen=True)
class SyncTarget:
    stage: str  # the default stage
    resource_id: int  # its resource that serves the pushed model
    model: str  # "name/version" it serves now
    cap: int | None


@task(name="check-target", cache_policy=NO_CACHE)
def check_target(endpoints: Endpoints, spec: SyncSpec, code: CodeSource, home: Path) -> SyncTarget | None:
    """Before any change: what a push replaces (None: a new endpoint), and that the counts fit the cap."""
    name = spec.model or spec.endpoint
    try:
        view = endpoints.get(spec.endpoint)
    except EndpointNotFound:
        limit = min(code.max_replicas or MAX_LOCAL_REPLICAS, MAX_LOCAL_REPLICAS)
        if spec.replicas > limit:
            why = (f"the cap, maximumInstanceCount {code.max_replicas}" if code.max_replicas is not None
                   and code.max_replicas < MAX_LOCAL_REPLICAS else f"{MAX_LOCAL_REPLICAS} on one machine")
            raise SpecError("--replicas", spec.replicas, f"at most {why}") from None
        return None
    st = next(s for s in view["stages"] if s["default"])
    res = next((r for r in st["resources"] if r["model"].rsplit("/", 1)[0] == name), None)
    if res is None or st["instance_type"] != LOCAL:
        raise SpecError("endpoint", spec.endpoint, f"a new endpoint name, or one whose default stage serves model "
                        f"{name} here (pushed with --sync before)")
    if st["status"] != "ACTIVE":
        raise Protected(f"stage {spec.endpoint}/{st['name']} is {st['status']}; wait until it is ACTIVE (or "
                        f"`mlyard endpoints retry {spec.endpoint}`)")
    running = len(files.of_stage(home, spec.endpoint, st["name"], res["id"]))
    cap = code.max_replicas or st["max_replicas"]
    if cap is not None and running > cap:
        raise SpecError("--max-instances", cap, f"at least the {running} replicas {spec.endpoint} runs now")
    return SyncTarget(st["name"], res["id"], res["model"], cap)


@task(name="register-code", cache_policy=NO_CACHE)
def register_code(models: Any, name: str, code: CodeSource, project: str = "default") -> Version:
    """The folder as a new version of model `name` (its files copied into the registry, without
    SKIPPED and the config file that names the endpoint)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "code"
        shutil.copytree(code.folder, snapshot, ignore=shutil.ignore_patterns(*SKIPPED), symlinks=False)
        (snapshot / CONFIG).unlink(missing_ok=True)
        params = {files.CODE_KIND: code.kind, **({"entry_script": code.entry_script} if code.kind == "entry-script"
                                                else {})}
        info = models.create_from_directory(name, snapshot, str(code.folder), parameters=params, framework=code.kind,
                                            description=f"pushed from {code.folder}", project=project)
    return info.name, str(info.version)
