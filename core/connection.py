"""One connection to the platform (DESIGN §2b): the CLI, a Python call and a flow run by a worker
all reach the same Prefect server, and nothing ever starts a hidden temporary one.

Which server, in this order:
1. `MLYARD_PREFECT_API_URL` (a production server);
2. inside a flow run that a worker started, the `PREFECT_API_URL` the worker handed it;
3. the embedded stack that `mlyard up` started for this home (`<home>/stack.json`, and it answers).
Otherwise `NotConnected` says so and how to start one. A `PREFECT_API_URL` left in a shell is not
used: it is too easily stale.

Prefect reads its settings when imported; `connect` sets the environment and, if Prefect was
imported already, has it read them again.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from mlyard.core.environment import flow_run_env
from mlyard.core.errors import NotConnected, PlatformUnreachable
from mlyard.core.settings import Settings


@dataclass
class StackState:
    """What `mlyard up` started: its URLs, and the pid and log of each process."""

    api_url: str
    ui_url: str
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    mlflow_ui_url: str | None = None
    mlflow_ui_port: int | None = None  # the port `up` was given for it: a later `up` or `ui mlflow` from any shell uses it
    service_url: str | None = None  # the warm mlyard API (mlyard/service.py) that answers the CLI's reads
    gateway_url: str | None = None  # the endpoint gateway (serving/gateway.py)
    vector_store_url: str | None = None  # the embedded PostgreSQL + pgvector (RAG vectors), a socket URL
    deployments: str | None = None  # digest of what the registered deployments were made from
    cluster_pools: bool = False  # the Kubernetes pools' deployments are registered too (Settings.cluster_pools)
    # The token the platform's own services show the gateway (a RAG's query service asking a private LLM
    # endpoint): every endpoint takes it. Made by `mlyard up`, kept in this file only (mode 0600).
    internal_token: str | None = None
    # Prefect's API auth string (`user:password`) when the server was started with one (MLYARD_PREFECT_AUTH)
    prefect_auth_string: str | None = None
    started_at: float = field(default_factory=time.time)


def read_state(settings: Settings) -> StackState | None:
    try:
        return StackState(**json.loads(settings.stack_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def find_api_url(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The Prefect API this process should use (see the module docstring), or None."""
    if settings.prefect_api_url:
        return settings.prefect_api_url
    run, url = flow_run_env() if environ is None else (environ.get("PREFECT__FLOW_RUN_ID"), environ.get("PREFECT_API_URL"))
    if run and url:
        return url
    state = read_state(settings)
    if state and state.api_url and healthy(state.api_url):
        return state.api_url
    return None


def point_prefect(settings: Settings, api_url: str | None) -> None:
    """Set the engines' environment (telemetry off, no ephemeral server, this API URL) for this
    process and the ones it starts; make an already imported Prefect read it again."""
    settings.prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect only creates the last level
    env = settings.engine_env()
    for key, value in env.items():
        if key.startswith("PREFECT_"):
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
        if not settings.prefect_api_url:  # the embedded server's auth string, when it has one
            state = read_state(settings)
            if state is not None and state.prefect_auth_string and state.api_url == api_url:
                os.environ["PREFECT_API_AUTH_STRING"] = state.prefect_auth_string
    os.environ.update(settings.plain_http_env(flow_run_env()[1]))
    if "prefect.context" in sys.modules:
        reread_prefect_settings()


# The PREFECT_* environment that Prefect's settings were last made from in this process.
_PREFECT_ENV_READ: dict[str, dict[str, str]] = {}


def reread_prefect_settings() -> None:
    """Have an imported Prefect make its settings again from the environment, if that changed since it
    last did here: a process that calls the platform again and again (a notebook, a test) does not
    rebuild them (60 ms of CPU each) for nothing."""
    seen = {key: value for key, value in os.environ.items() if key.startswith("PREFECT_")}
    if seen != _PREFECT_ENV_READ.get("env"):
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
        _PREFECT_ENV_READ["env"] = seen


def connect(settings: Settings | None = None) -> Settings:
    """Point this process at the running platform, or raise NotConnected saying how to start it."""
    settings = settings or Settings()
    url = find_api_url(settings)
    if url is None:
        state = None if settings.prefect_api_url else read_state(settings)
        if state is not None and state.api_url:  # a stack was started here: its server is away, not absent
            raise PlatformUnreachable(state.api_url, "its health check got no answer")
        raise NotConnected(str(settings.home_dir))
    point_prefect(settings, url)
    return settings


def connect_if_running(settings: Settings | None = None) -> str | None:
    """`connect` for an import: never raises; without a platform only the environment is set."""
    settings = settings or Settings()
    url = find_api_url(settings)
    point_prefect(settings, url)
    return url


REPLICA_HEADER = b"x-mlyard-replica"  # what the gateway shows a replica (serving/access.py checks it)


def internal_token(settings: Settings) -> str | None:
    """The platform's own credential (Settings.internal_token): set, or the one `mlyard up` made."""
    if settings.internal_token is not None:
        return settings.internal_token.get_secret_value()
    state = read_state(settings)
    return state.internal_token if state is not None else None


def internal_headers(settings: Settings) -> dict[str, str]:
    """Headers that pass the gateway's management routes and the mlyard API's runs."""
    token = internal_token(settings)
    return {"Authorization": f"Bearer {token}"} if token else {}


def dashboard_key(internal: str) -> str:
    """The key of the dashboard page (GET /dashboard?key=... on the mlyard API), derived from the internal
    credential: it opens that read-only page and nothing else, so it can sit in a browser's address bar."""
    import hashlib
    import hmac

    return hmac.new(internal.encode(), b"mlyard-dashboard", hashlib.sha256).hexdigest()[:40]


def replica_token(internal: str) -> str:
    """The replicas' credential, derived from the internal one: a replica (which runs a model's own code)
    holds only this, which opens no endpoint and no management route."""
    import hashlib
    import hmac

    return hmac.new(internal.encode(), b"mlyard-replica", hashlib.sha256).hexdigest()


def notebook_token(internal: str, notebook_id: int, created: str) -> str:
    """The JupyterLab token of a notebook on a cluster, derived from the internal credential: the notebook
    flow's pod writes it into the notebook's Secret, and the front door (another pod) derives it again to let
    its user in; no pod keeps it in a file, and the door reads no Secret. `created`: the record's creation
    time, so that a notebook made again under the same id never opens with the old one's token."""
    import hashlib
    import hmac

    return hmac.new(internal.encode(), f"mlyard-notebook:{notebook_id}:{created}".encode(), hashlib.sha256).hexdigest()


def replica_key_token(replicas: str, key: str) -> str:
    """The credential of the one replica `key` that runs a user's code on this machine (a model's server, a
    notebook), derived from the replicas' one: what the gateway sends it, which opens no other replica."""
    import hashlib
    import hmac

    return hmac.new(replicas.encode(), f"mlyard-replica:{key}".encode(), hashlib.sha256).hexdigest()


def replica_headers(settings: Settings) -> dict[str, str]:
    """What lets the platform's own code call a replica directly, as the gateway does (a RAG's ingestion
    embedding through its query service, the query service asking its own LLM): a replica's own
    credential (MLYARD_REPLICA_TOKEN), else the one derived from the internal credential."""
    if settings.replica_token is not None:
        return {REPLICA_HEADER.decode(): settings.replica_token.get_secret_value()}
    internal = internal_token(settings)
    return {REPLICA_HEADER.decode(): replica_token(internal)} if internal else {}


def replica_key_headers(settings: Settings, key: str) -> dict[str, str]:
    """What lets the platform's own code call the one replica `key` that runs a user's code in its sandbox (a
    RAG's own LLM): that replica's own credential, derived from the replicas' one (`replica_headers`)."""
    shared = replica_headers(settings)
    return {name: replica_key_token(value, key) for name, value in shared.items()}


def gateway_url(settings: Settings) -> str:
    """The endpoint gateway's URL: the one the settings name (a cluster's Service), else the one `mlyard up`
    started for this home, else where it would start it."""
    if settings.gateway_url:
        return settings.gateway_url.rstrip("/")
    state = read_state(settings)
    return (state.gateway_url if state is not None and state.gateway_url else None) or settings.local_gateway_url
