"""What a process is told about itself through its environment, read here (and in core/settings.py, the
user's settings) alone: by the process that started it (the replica supervisor, a node Job, the warm
runner), by Prefect and Kubernetes, or by a spec that names a variable for a secret. Standard library only:
a model server or the `mlyard` entry point reads these without importing pydantic (0.2 s).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlyard.core.home import DEFAULT_HOME, find_home


def home() -> Path:
    """The home as Settings finds it (MLYARD_HOME, else the nearest .mlyard from here up)."""
    return find_home(os.environ.get("MLYARD_HOME") or DEFAULT_HOME)


def pip_find_links() -> list[str]:
    """The local folders pip is pointed at for wheels (PIP_FIND_LINKS, space-separated)."""
    return [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if os.path.isdir(p)]


def code_host() -> Path | None:
    """Where this pod's code-host container takes user code to run (MLYARD_CODE_HOST, set by the flow-run
    pods' templates: tasks/code_host.py); None elsewhere."""
    value = os.environ.get("MLYARD_CODE_HOST")
    return Path(value) if value else None


def warm_cli() -> bool:
    """Whether a command may run in the warm runner (MLYARD_WARM_CLI=0 keeps it in its own process)."""
    return os.environ.get("MLYARD_WARM_CLI", "1") != "0"


def cache_root() -> Path:
    """Where downloads, exported and compiled models are cached (MLYARD_CACHE_DIR; ~/.cache/mlyard)."""
    return Path(os.environ.get("MLYARD_CACHE_DIR") or Path.home() / ".cache" / "mlyard")


def served_endpoint() -> tuple[str | None, str | None]:
    """The endpoint and stage a model server replica serves (MLYARD_ENDPOINT_ID and _STAGE_ID, set by the
    replica supervisor and the cluster's Deployments): (None, None) for a server of its own."""
    return os.environ.get("MLYARD_ENDPOINT_ID") or None, os.environ.get("MLYARD_ENDPOINT_STAGE_ID") or None


REPLICA_TOKEN_FD = "MLYARD_REPLICA_TOKEN_FD"  # a descriptor to read the replica's credential from, once


def take_replica_token() -> None:
    """A replica's credential, read from the pipe its supervisor handed it (REPLICA_TOKEN_FD) into this
    process's settings (MLYARD_REPLICA_TOKEN), the pipe then drained and closed: an environment is readable
    in /proc by every process beside it in its sandbox (bubblewrap's own, the code a user brought), a
    drained pipe by none. Nothing without one."""
    fd = os.environ.pop(REPLICA_TOKEN_FD, None)
    if fd is None or not fd.isdigit():
        return
    try:
        os.environ["MLYARD_REPLICA_TOKEN"] = os.read(int(fd), 4096).decode().strip()
    finally:
        os.close(int(fd))


def tracking_env(uri: str, internal: str | None) -> dict[str, str]:
    """MLFLOW_TRACKING_TOKEN, the tracking credential, for a platform process whose tracking server speaks HTTP
    (the cluster's `mlflow` Service answers it alone); nothing over a credential of the user's own (a tracking
    server of theirs, its token or user name in the environment) or without the internal credential."""
    if not uri.startswith(("http://", "https://")) or not internal or os.environ.get("MLFLOW_TRACKING_TOKEN") \
            or os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return {}
    return {"MLFLOW_TRACKING_TOKEN": tracking_token(internal)}


def tracking_token(internal: str) -> str:
    """The credential the platform's processes send to its MLflow tracking server (MLFLOW_TRACKING_TOKEN),
    derived from the internal one: the cluster's `mlflow` Service answers it alone (mlyard/mlflow_server.py)."""
    import hashlib
    import hmac

    return hmac.new(internal.encode(), b"mlyard-mlflow-tracking", hashlib.sha256).hexdigest()


def metrics_token(internal: str) -> str:
    """The scrape credential, derived from the internal one: the platform's /metrics routes answer it, and
    nothing else does (`mlyard k8s apply` writes it into the Secret mlyard-metrics for the ServiceMonitors, so
    Prometheus never holds a credential that reads or changes anything)."""
    import hashlib
    import hmac

    return hmac.new(internal.encode(), b"mlyard-metrics-scrape", hashlib.sha256).hexdigest()


MODEL_FILES = "MLYARD_MODEL_FILES"


def model_files_value(ref: str, path: str, name: str, version: str, parameters: dict[str, str]) -> str:
    """MLYARD_MODEL_FILES's value for a replica of the version `ref`, whose files are at `path`."""
    import json

    return json.dumps({ref: {"path": path, "name": name, "version": version, "parameters": parameters}})


def model_files(ref: str) -> dict[str, Any] | None:
    """What an endpoint's flow found of the version `ref` (models:/NAME/VERSION) that this replica serves:
    its files' path, name, version and parameters (MLYARD_MODEL_FILES, set on the replica by
    tasks/endpoints.py and on a cluster tasks/kubernetes.py), so that the replica reaches neither the registry
    nor the stack."""
    import json

    found = json.loads(os.environ.get(MODEL_FILES) or "{}").get(ref)
    return found if isinstance(found, dict) else None


def node_job_env() -> dict[str, str]:
    """A multi-node training's node: its spec and job (JSON), the training and MLflow run, and its index
    (MLYARD_NODE_*, set by tasks/node_jobs.py; JOB_COMPLETION_INDEX, set by the Indexed Job)."""
    keys = {"spec": "MLYARD_NODE_SPEC", "job": "MLYARD_NODE_JOB", "training_id": "MLYARD_NODE_TRAINING_ID",
            "run_id": "MLYARD_NODE_RUN_ID", "index": "JOB_COMPLETION_INDEX"}
    missing = [v for v in keys.values() if v not in os.environ]
    if missing:
        raise RuntimeError(f"not a node of a multi-node training: {', '.join(missing)} unset (tasks/node_jobs.py sets them)")
    return {k: os.environ[v] for k, v in keys.items()}


def catalog_connections(default: int) -> int:
    """The most connections this process's catalog pool holds to a database server: MLYARD_CATALOG_CONNECTIONS
    (a cluster's ConfigMap, a run pod's job template; tasks/cluster_connections.py), else `default`."""
    return max(1, int(os.environ.get("MLYARD_CATALOG_CONNECTIONS") or default))


def install_notebook_image() -> str | None:
    """A cluster install's notebook image (values.images.notebook, MLYARD_NOTEBOOK_IMAGE of its ConfigMap): what
    a notebook that names none runs there, where `python` (this machine's) means nothing."""
    return os.environ.get("MLYARD_NOTEBOOK_IMAGE") or None


def install_pull_secrets() -> tuple[str, ...]:
    """A cluster install's image pull Secrets (values.image_pull_secrets, MLYARD_IMAGE_PULL_SECRETS): its
    mirror's login, given to the pods the platform's flows make with its images."""
    return tuple(n for n in os.environ.get("MLYARD_IMAGE_PULL_SECRETS", "").split(",") if n)


def stranded_after_seconds(default: float) -> float:
    """How long a pool's worker lets a claim without a Job stand before queueing its run again
    (tasks/pool_worker.py): MLYARD_STRANDED_AFTER_SECONDS, else `default`."""
    return float(os.environ.get("MLYARD_STRANDED_AFTER_SECONDS") or default)


def pod_name() -> str | None:
    """This pod's name (POD_NAME from the downward API, else the HOSTNAME Kubernetes gives it)."""
    return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME")


def own_image() -> str | None:
    """The image this flow-run pod runs, as the worker rendered it into the pool's job template (MLYARD_POD_IMAGE,
    infra/*-job-template.json); None where no template set it."""
    return os.environ.get("MLYARD_POD_IMAGE") or None


def kubeconfig_path() -> str | None:
    """The kubeconfig a client outside the cluster uses (KUBECONFIG; None: ~/.kube/config)."""
    return os.environ.get("KUBECONFIG")


def flow_run_env() -> tuple[str | None, str | None]:
    """The flow run this process runs and the Prefect API it was started against (PREFECT__FLOW_RUN_ID and
    PREFECT_API_URL, set by Prefect's workers): (None, ...) outside a flow run."""
    return os.environ.get("PREFECT__FLOW_RUN_ID") or None, os.environ.get("PREFECT_API_URL") or None


def runtime_images() -> dict[str, str]:
    """A cluster's images of the runtime variants (MLYARD_RUNTIME_IMAGES, a JSON object: variant -> image,
    set from the values' `runtimeImages`), over core/runtimes.py's defaults; unset or unreadable: none."""
    import json

    try:
        found = json.loads(os.environ.get("MLYARD_RUNTIME_IMAGES") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def named_secret(variable: str | None) -> str | None:
    """The value of the environment variable a spec names for a secret (a RAG's `password_env`,
    `api_key_env`): the secret itself never enters a spec."""
    return os.environ.get(variable) if variable else None


def python_path() -> str:
    """This process's PYTHONPATH, for a child that must see the same packages ("" when unset)."""
    return os.environ.get("PYTHONPATH", "")


def flag(variable: str, default: bool = False) -> bool:
    """An on/off variable of the engines or a launcher (PYTHONUNBUFFERED, MLFLOW_ALLOW_PICKLE_
    DESERIALIZATION, mlyard's re-exec marks): unset is `default`; "", "0", "false", "no", "off" are off."""
    value = os.environ.get(variable)
    if value is None:
        return default
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def search_path() -> str:
    """This process's PATH, for a child that must find the same commands first ("" when unset)."""
    return os.environ.get("PATH", "")


def migration_databases() -> tuple[str | None, str | None]:
    """The databases the migration Job upgrades besides the catalog: MLflow's (MLFLOW_BACKEND_STORE_URI, as
    MLflow's server reads it) and Prefect's (PREFECT_SERVER_DATABASE_CONNECTION_URL, or its older name
    PREFECT_API_DATABASE_CONNECTION_URL: Prefect's own setting, which its upgrade command reads too)."""
    return (os.environ.get("MLFLOW_BACKEND_STORE_URI") or None,
            os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
            or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or None)


def release_check() -> tuple[str, str]:
    """What an install's release check Job asks of its image (tasks/cluster_release.py): the values field that
    names it (MLYARD_IMAGE_FIELD) and the release its manifests are (MLYARD_RELEASE; "" unnamed)."""
    return os.environ.get("MLYARD_IMAGE_FIELD", "this image"), os.environ.get("MLYARD_RELEASE", "")


def backup_sources() -> dict[str, str | None]:
    """What a cluster's backup Job reads beside the settings (tasks/cluster_backup.py), from the install's Secrets as
    the migration Job is given them: MLflow's database (MLFLOW_BACKEND_STORE_URI) and artifacts
    (MLYARD_BACKUP_ARTIFACTS), Prefect's database (PREFECT_SERVER_DATABASE_CONNECTION_URL)."""
    return {"mlflow": os.environ.get("MLFLOW_BACKEND_STORE_URI") or None,
            "prefect": os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or None,
            "artifacts": os.environ.get("MLYARD_BACKUP_ARTIFACTS") or None}


def member_egress(stage: bool = False) -> list[dict]:
    """The egress rules of the pods that run a member's code on a cluster (endpoint stages, notebooks): from the
    install's values' `network` (MLYARD_NETWORK), or their defaults."""
    from mlyard.core.specs.cluster import NetworkValues

    said = os.environ.get("MLYARD_NETWORK")
    return (NetworkValues.model_validate_json(said) if said else NetworkValues()).member_egress(stage)


def metrics_folder() -> str | None:
    """Where prometheus_client's multiprocess mode keeps the counts of a server's workers
    (PROMETHEUS_MULTIPROC_DIR, as prometheus_client itself reads it)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


LOGIN_FILE = Path("~/.config/mlyard/login.json")


def login_path() -> Path:
    """Where `mlyard login` keeps the user's API key, the API's address and their project."""
    return LOGIN_FILE.expanduser()


def apply_login(environ: dict[str, str] | None = None) -> None:
    """The CLI's and the Python API's defaults from `mlyard login` (MLYARD_API_URL, MLYARD_API_KEY,
    MLYARD_PROJECT), where the environment does not say them already. Only a user's own commands read it:
    the stack's servers never do."""
    import json

    target: Any = os.environ if environ is None else environ
    try:
        saved = json.loads(login_path().read_text())
    except (OSError, ValueError):
        return
    for key in ("api_url", "api_key", "project"):
        if isinstance(saved.get(key), str) and f"MLYARD_{key.upper()}" not in target:
            target[f"MLYARD_{key.upper()}"] = saved[key]
