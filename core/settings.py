"""Settings: the only place mlyard reads the environment.

Every field can be set as `MLYARD_<FIELD>` (for example `MLYARD_HOME`, `MLYARD_S3_ENDPOINT_URL`).
`Settings(**overrides)` or `Settings.from_mapping(...)` builds one without touching `os.environ`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Mapping

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlyard.core.environment import tracking_env
from mlyard.core.home import DATABASE_FILE, DEFAULT_HOME, STACK_FILE, find_home, pg_password, plain_http_ca_file

# Environment that turns off every usage-telemetry sender of the engines we run.
TELEMETRY_OFF_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}

HEARTBEAT_SECONDS = 30
UNRESPONSIVE_AFTER_SECONDS = 100  # silent this long: CRASHED; > a 60 s Prefect outage + a heartbeat + slack

DEFAULT_IMAGE = "mlyard:0.1.0"

# Settings as files, one per field (`mlyard_catalog_url`, `mlyard_s3_secret_access_key`, ...): how a
# Kubernetes Secret mounted there reaches every mlyard pod (infra/k8s), besides the environment.
SECRETS_DIR = os.environ.get("MLYARD_SECRETS_DIR", "/var/run/secrets/mlyard")


class Settings(BaseSettings):
    """Where mlyard keeps its state and how it reaches the engines."""

    model_config = SettingsConfigDict(env_prefix="MLYARD_", extra="ignore",
                                      secrets_dir=SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None)

    home: Path = Field(
        default=Path(DEFAULT_HOME),
        description="Directory holding all embedded state (Prefect DB, MLflow DB and artifacts, "
        "catalog, caches). Deleting it resets the embedded platform. Default: the .mlyard in the current "
        "directory or the nearest parent that has one, else ./.mlyard.",
    )
    prefect_api_url: str | None = Field(
        default=None,
        description="Prefect API URL of a production server (e.g. http://prefect:4200/api). "
        "Unset: the embedded server that `mlyard up` started for this home.",
    )
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="Port of the embedded Prefect server.")
    api_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port of the mlyard API that `mlyard up` starts (it answers the CLI's lists and shows "
        "warm). Unset: the Prefect port + 1 (4201).")
    api_url: str | None = Field(
        default=None, pattern=r"^https?://", description="The platform's mlyard API as a workstation reaches it (a "
        "cluster's ingress, or `kubectl port-forward svc/mlyard-api 8080:8080`), with MLYARD_API_KEY (or the platform's "
        "MLYARD_INTERNAL_TOKEN): the CLI's reads, catalog writes and runs go there. Unset: this machine's stack.")
    api_key: SecretStr | None = Field(default=None, description="A team member's API key (`mlyard login` keeps it "
        "private): the CLI and Python act as that user through the platform's mlyard API (MLYARD_API_URL, or this "
        "machine's stack's). Unset: the stack's owner, an admin, when you can read its home.")
    project: str | None = Field(default=None, description="The project commands and Python calls act in "
                                "(`--project`). Unset: your only project, or `default` for an admin.")
    gateway_port: int | None = Field(default=None, ge=1, le=65535, description="Port of the endpoint gateway that "
                                     "`mlyard up` starts. Unset: the Prefect port + 2 (4202).")
    gateway_url: str | None = Field(default=None, pattern=r"^https?://", description="The gateway as the platform's "
        "pods reach it (a cluster's Service, http://gateway:8080). Unset: the one `mlyard up` started, or would.")
    door_port: int | None = Field(default=None, ge=1, le=65535, description="Port of the front door to the Prefect UI "
                                  "for project members (mlyard/prefect_door.py). Unset: the Prefect port + 3 (4203).")
    door_public_url: str | None = Field(default=None, pattern=r"^https?://", description="The front door as people reach "
        "it (a cluster's ingress): the links members are given. Unset: http://127.0.0.1:<door port>.")
    door_trusted_proxy: bool = Field(default=False, description="The front door sits behind oauth2-proxy in its pod "
        "(infra/k8s/components/sign-in), on 127.0.0.1, and takes the user and groups from the proxy's X-Forwarded-"
        "Preferred-Username (or -User) and X-Forwarded-Groups. Off: those headers are ignored.")
    image: str = Field(default=DEFAULT_IMAGE, description="The mlyard image that Kubernetes pools and endpoint "
        "Deployments run (infra/docker/mlyard.Dockerfile, target platform), e.g. registry.example/mlyard:0.1.0. "
        "`mlyard up` renders the gpu deployments with it.")
    serving_image: str | None = Field(default=None, description="The image of endpoint stages' model servers on "
        "Kubernetes (infra/docker/mlyard.Dockerfile, target serving); a cluster install sets it from its values "
        "(images.serving) in the mlyard-config ConfigMap. Unset: `image`.")
    cluster_pools: bool | None = Field(
        default=None, description="Whether the embedded stack also registers the deployments of the Kubernetes "
        "pools (gpu, cpu), for a Kubernetes worker you run against a cluster (`prefect worker start --pool gpu "
        "--type kubernetes`). Off (a new home), the Prefect UI lists only the local deployments, which run here. "
        "`mlyard up` keeps the choice in the home's stack.json; unset: the home's choice.")
    kube_namespace: str = Field(default="mlyard", description="Kubernetes namespace of endpoint Deployments, etc.")
    settings_secret: str = Field(default="mlyard-settings", description="The Secret of these settings on a cluster "
                                 "(values' secrets.settings): the pods that flows make read their keys from it.")
    kube_service_url: str = Field(
        default="http://{service}.{namespace}.svc.cluster.local:{port}",
        description="How the gateway reaches a stage resource's Service on the cluster: {service}, {namespace}, "
        "{port} and {cluster_ip} are filled in when the stage is routed. The default is the Service's cluster DNS "
        "name; a gateway outside the cluster's DNS can use http://{cluster_ip}:{port}.")
    http_route_gateway: str | None = Field(
        default=None, description="On a cluster that routes with the Gateway API: the Gateway (NAME or "
        "NAMESPACE/NAME) an endpoint's HTTPRoute attaches to; every change of traffic shares applies it with the "
        "same weights (tasks/http_route.py). Unset: mlyard's gateway routes.")
    kueue_queue: str | None = Field(default=None, description="On a cluster with Kueue: the LocalQueue the gpu pool's "
                                    "Jobs are labelled for (admitted against the GPU quota: trials wait for it).")
    lease: str | None = Field(
        default=None, description="On a cluster: the Lease (in kube_namespace) this part's replicas elect one leader "
        "with, whose holder alone runs the control loop (the scheduler's; the API's crash follower). Unset: one machine.")
    gpu_slots: int | None = Field(
        default=None, ge=0, le=64, description="GPUs of this machine that local trainings and trials share, as "
        "a Prefect global concurrency limit (mlyard-gpu): a run takes its resources.gpu_count slots before its "
        "entry point starts. Unset: the GPUs `nvidia-smi -L` lists (0 without it: gpu_count is not enforced).")
    sandbox: Literal["auto", "required", "off"] = Field(default="auto", description="User code in a sandbox "
        "(bubblewrap; in a flow-run pod, its code-host container: tasks/sandbox.py, code_host.py). auto: where user "
        "namespaces allow, said in the run's log where not; required: else the run fails first; off: never.")
    script_confinement: Literal["auto", "required", "off"] = Field(default="auto", description="Landlock as a second "
        "wall (tasks/confine.py): the home, a pod's Secrets, out of the script's reach; auto, required, off as for "
        "`sandbox`, by whether the kernel has Landlock (5.13 or newer).")
    registry_secrets: Literal["auto", "file", "kubernetes"] = Field(
        default="auto", description="Where registry accounts' passwords are kept: `kubernetes` as "
        "kubernetes.io/dockerconfigjson Secrets in kube_namespace (of the kubeconfig's or the in-cluster "
        "cluster), `file` as private files under <home>/secrets. auto: kubernetes in a pod, file elsewhere.")
    warm_starts: bool = Field(
        default=True,
        description="Start the local pool's flow runs warm: a runner that has imported Prefect, MLflow and the "
        "flows forks one child per run (mlyard/warm). False: every run starts a fresh Python process. "
        "Takes effect at the next `mlyard up`.")
    autoscale_interval: float = Field(default=5.0, gt=0, le=3600, description="Seconds between the gateway's autoscaling passes.")
    local_runs: int | None = Field(default=None, ge=1, le=256, description="Flow runs the local pool runs at once; the "
        "others wait in a line fair across projects (tasks/local_line.py). Unset: two per core, one per 2 GiB, the fewer.")
    notebook_ports: str | None = Field(
        default=None, pattern=r"^\d{1,5}-\d{1,5}$", description="Ports local notebooks take, as FIRST-LAST (e.g. "
        "8800-8899). A notebook keeps its port (and so its URL) across stop, start and reboot while it is free. "
        "Unset: any free port the first time.")
    database: Literal["sqlite", "postgres"] | None = Field(
        default=None, description="Where the embedded stack keeps Prefect's, MLflow's and the catalog's databases: "
        "`sqlite`, files in <home>; or `postgres`, databases of the embedded PostgreSQL under <home>/postgres (the "
        "server RAG's vectors use), as production keeps them: its types, locks, migrations and concurrent writers "
        "show on one machine. A home keeps the choice of its first `mlyard up` (in <home>/database); unset: that "
        "choice, sqlite for a new home. Servers named by prefect_api_url, mlflow_tracking_uri or catalog_url are "
        "used as they are.")
    mlflow_tracking_uri: str | None = Field(default=None, description="MLflow tracking URI (e.g. http://mlflow:5000). "
        "Unset: sqlite:///<home>/mlflow.db, or the embedded PostgreSQL's mlflow database (see `database`).")
    mlflow_ui_port: int = Field(default=5000, ge=1, le=65535, description="Port of `mlyard ui mlflow`.")
    catalog_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the platform catalog (e.g. postgresql+psycopg://...). "
        "Unset: sqlite:///<home>/catalog.db, or the embedded PostgreSQL's catalog database (see `database`).",
    )
    upload_uri: str | None = Field(
        default=None, description="Where a run queued on a Kubernetes pool gets the inputs given as paths on the "
        "submitting machine (source, datasets, a checkpoint, a model folder): uploaded once per content under this "
        "prefix (e.g. s3://ml-bucket/uploads, with this machine's S3 settings). Unset: such a path is refused.")
    projects_uri: str | None = Field(
        default=None, description="The platform's storage of projects: a member's uploads and run outputs go under "
        "<projects_uri>/<project>/ and nowhere else (e.g. s3://ml-bucket/projects). Unset: <home>/projects.")
    s3_endpoint_url: str | None = Field(default=None, description="Endpoint of the S3-compatible store for s3:// URIs (unset: AWS).")
    s3_access_key_id: str | None = Field(default=None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")
    obs_scheme: str = Field(default="https", description="Scheme used to reach the endpoint host named in "
                            "obs://{endpoint}/{container}/{path}.")
    nas_mounts: dict[str, Path] = Field(default_factory=dict, description='NAS id -> mount root, as JSON (e.g. '
                                        '{"nas-1": "/mnt/nas-1"}); nas://nas-1:/data then means /mnt/nas-1/data.')
    region: str = Field(default="local", description="Region name handed to trainings as EM_REGION.")
    log_retention_days: int = Field(
        default=30, ge=1,
        description="Structured log records (`mlyard logs`) older than this many days are deleted: their day "
        "files and their rows in the index, checked every hour by the mlyard API.")
    schedule_start_timeout_seconds: int = Field(
        default=600, ge=1,
        description="A scheduled run still not started (no worker took it) after this long is cancelled and its "
        "concurrency slot reclaimed.")
    pipeline_artifact_retention_days: float = Field(
        default=120, gt=0, description="A pipeline run's outputs and artifacts are removed this long after it ran.")
    kfp_host: str | None = Field(
        default=None, description="A Kubeflow Pipelines API server (e.g. http://ml-pipeline.kubeflow:8888): pipeline "
        "runs are submitted there through kfp.Client. Unset: they run here with kfp.local.")
    schedule_lead_seconds: float = Field(
        default=60.0, ge=0, le=3600,
        description="The scheduler creates a slot's run up to this long before its time, scheduled to start at it "
        "(as Prefect's own scheduler does), so that many schedules firing in the same second all start on time: "
        "Prefect on SQLite takes 0.1-0.5 s to create a run.")
    vector_store_url: str | None = Field(
        default=None, description="The PostgreSQL (with pgvector) of RAGs whose vector store is `embedded`, as a "
        "postgresql:// URL. Unset: the one `mlyard up` runs under <home>/postgres.")
    telemetry: bool = Field(default=False, description="Allow the engines (Prefect, MLflow) to send usage telemetry.")
    internal_token: SecretStr | None = Field(
        default=None, description="The platform's own credential: the gateway's management routes (/mlyard/*), "
        "the mlyard API's POST /v1/runs, and the platform's services calling private endpoints show it. Unset: the "
        "one `mlyard up` made for this home (stack.json, mode 0600). On Kubernetes: `mlyard_internal_token` in the "
        "mlyard-settings Secret.")
    compile_at_registration: bool = Field(
        default=True, description="Registering a scikit-learn model version compiles it to ONNX and verifies it "
        "once (tasks/compiled.py), so its first serve and every batch load the compiled model.")
    prefect_auth: bool = Field(
        default=True, description="`mlyard up` starts the embedded Prefect server with an API auth string (made "
        "then, kept in stack.json, mode 0600): its API and websockets answer only the platform's processes and "
        "this user's commands, and the Prefect UI asks for the string once per browser (`mlyard ui prefect` "
        "prints it). False opens the Prefect API to every account of this machine (anyone on 127.0.0.1 could read "
        "every run and start a training's script as you). Takes effect at the next `mlyard up` of a stopped "
        "stack. On Kubernetes it is always on (`auth-string` in the mlyard-prefect Secret).")
    replica_token: SecretStr | None = Field(
        default=None, description="Set by the platform on the replicas it starts: a replica answers only requests "
        "that carry it (the gateway's), health checks aside. Unset (a `mlyard serve` of your own): no check. On "
        "Kubernetes: `mlyard_replica_token` in the mlyard-settings Secret, which the gateway sends and every stage's "
        "pods check (locally it is derived from the internal credential).")
    max_request_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, le=1024**3, description="The gateway's limit on a request body (413 above "
        "it, before it reads one whose Content-Length says so), unless an endpoint's spec sets its own "
        "`max_request_bytes`; an endpoint's replicas are started with the same limit (`mlyard serve`'s default).")

    @field_validator("kube_service_url")
    @classmethod
    def _service_url(cls, value: str) -> str:
        try:
            value.format(service="s", namespace="n", port=80, cluster_ip="10.0.0.1")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{value!r} may name only {{service}}, {{namespace}}, {{port}} and {{cluster_ip}} "
                             f"({type(exc).__name__}: {exc})") from None
        if not value.startswith("http://"):
            raise ValueError(f"{value!r} must start with http:// (the gateway reaches replicas in plain HTTP)")
        return value

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> "Settings":
        """Build settings from any mapping of `MLYARD_*` variables instead of `os.environ`."""
        fields = {}
        for name in cls.model_fields:
            key = f"MLYARD_{name.upper()}"
            if key in env:
                fields[name] = env[key]
        return cls.model_validate(fields)

    # -- derived locations -------------------------------------------------------------------

    @property
    def home_dir(self) -> Path:
        """The home (mlyard.core.home.find_home: the default `.mlyard` is looked for from here up)."""
        return find_home(self.home)

    @property
    def service_port(self) -> int:
        return self.api_port or self.prefect_port + 1

    @property
    def local_gateway_url(self) -> str:  # where `mlyard up` starts the gateway on this machine
        return f"http://127.0.0.1:{self.gateway_port or self.prefect_port + 2}"

    @property
    def door_url(self) -> str:
        return (self.door_public_url or "").rstrip("/") or f"http://127.0.0.1:{self.door_port or self.prefect_port + 3}"

    @property
    def registry_secrets_on_cluster(self) -> bool:
        return self.registry_secrets == "kubernetes" or (self.registry_secrets == "auto" and in_kubernetes_pod())

    @property
    def secrets_path(self) -> Path:
        return self.home_dir / "secrets"  # registry accounts' Secrets on one machine: one private file each

    @property
    def pipeline_runs_dir(self) -> Path:
        return self.home_dir / "pipeline-runs"

    @property
    def prefect_home(self) -> Path:
        return self.home_dir / "prefect"

    @property
    def embedded_database(self) -> str:
        """`sqlite` or `postgres`: the home's choice (see `database`), else this setting's, else sqlite."""
        try:
            return (self.home_dir / DATABASE_FILE).read_text().strip()
        except FileNotFoundError:
            return self.database or "sqlite"

    def embedded_postgres_url(self, database: str, driver: str = "psycopg") -> str:
        """A database of the embedded PostgreSQL, reached on its Unix socket in its data folder (it
        listens on no TCP port) with the home's password (core/home.py `pg_password`)."""
        return f"postgresql+{driver}://postgres:{pg_password(self.home_dir)}@/{database}?host={self.pgsocket_dir}"

    @property
    def pgsocket_dir(self) -> Path:
        """Where the embedded PostgreSQL's socket is reached: its data folder, or, when that path is too long
        for a Unix socket (107 bytes), a short link to it in the temporary folder, this user's and named
        after the data folder (mlyard/postgres.py makes it). The socket stays in the private data folder."""
        import hashlib
        import tempfile

        data = self.pgdata_dir.resolve()
        if len(str(data / ".s.PGSQL.5432").encode()) <= 107:
            return data
        digest = hashlib.sha256(str(data).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"mlyard-pg-{os.geteuid()}-{digest}"

    @property
    def prefect_database_url(self) -> str | None:
        """The embedded Prefect server's database when it is PostgreSQL (None: Prefect's SQLite file in
        prefect_home)."""
        return self.embedded_postgres_url("prefect", "asyncpg") if self.embedded_database == "postgres" else None

    @property
    def mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if self.embedded_database == "postgres":
            return self.embedded_postgres_url("mlflow")
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.home_dir / "mlartifacts"

    @property
    def catalog_db_url(self) -> str:
        if self.catalog_url:
            return self.catalog_url
        if self.embedded_database == "postgres":
            return self.embedded_postgres_url("catalog")
        return f"sqlite:///{self.home_dir / 'catalog.db'}"

    @property
    def envs_dir(self) -> Path:
        """Cached virtual environments for algorithms' requirements.txt, one per hash."""
        return self.home_dir / "envs"

    @property
    def runs_dir(self) -> Path:
        """Scratch directories of trainings (staged inputs, model dir, logs)."""
        return self.home_dir / "runs"

    @property
    def pgdata_dir(self) -> Path:
        """The embedded PostgreSQL's data directory (RAG vectors; with `database` postgres, the stores')."""
        return self.home_dir / "postgres"

    @property
    def stack_file(self) -> Path:
        """What `mlyard up` started (pids and URLs)."""
        return self.home_dir / STACK_FILE

    def as_env(self) -> dict[str, str]:
        """These settings as the MLYARD_* environment of a process mlyard starts (a batch worker): the
        way settings, storage credentials among them, reach it, never through a file."""
        import json

        data = self.model_dump(mode="json", exclude_none=True)
        if self.s3_secret_access_key is not None:
            data["s3_secret_access_key"] = self.s3_secret_access_key.get_secret_value()
        return {f"MLYARD_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}

    def engine_env(self) -> dict[str, str]:
        """Environment for the engines' clients and for every process mlyard starts."""
        env = {} if self.telemetry else dict(TELEMETRY_OFF_ENV)
        env["MLYARD_HOME"] = str(self.home_dir)
        env["PREFECT_HOME"] = str(self.prefect_home)
        env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        env.update(tracking_env(self.mlflow_uri, self.internal_token.get_secret_value() if self.internal_token else None))
        # never Prefect's hidden temporary server (its default without an API URL): mlyard names its own (core/connection.py)
        env["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
        # Every flow run reports every 30 s (Prefect's minimum); `mlyard up` installs the automation that
        # marks a run whose reports stop (a killed process, a dead worker, a reboot) CRASHED.
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_SECONDS)
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        env.update(self.plain_http_env(self.prefect_api_url))
        return env

    def plain_http_env(self, api_url: str | None) -> dict[str, str]:
        """For a Prefect API spoken over plain HTTP: Prefect's TLS context loads a one-certificate
        bundle (see `plain_http_ca_file`). Nothing for TLS or an unknown URL."""
        if not (api_url or "").startswith("http://"):
            return {}
        return {"PREFECT_API_SSL_CERT_FILE": str(plain_http_ca_file(self.prefect_home))}


def in_kubernetes_pod() -> bool:
    """Whether this process runs in a Kubernetes pod (the kubelet sets KUBERNETES_SERVICE_HOST in every one)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def require_shared_stores(settings: Settings) -> None:
    """In a Kubernetes pod, refuse to start without the tracking and catalog URLs (LocalStoresInPod)
    instead of writing to SQLite files that vanish with the pod. Nothing to check elsewhere."""
    from mlyard.core.errors import LocalStoresInPod

    if not in_kubernetes_pod():
        return
    missing = [name for name in ("mlflow_tracking_uri", "catalog_url") if not getattr(settings, name)]
    if missing:
        raise LocalStoresInPod(missing)


def apply_engine_env(settings: Settings, environ: dict[str, str] | None = None) -> None:
    """Point the engines' clients (which read the environment) at this mlyard's stack."""
    target = os.environ if environ is None else environ
    settings.prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect only creates the last level
    for key, value in settings.engine_env().items():
        target.setdefault(key, value)
