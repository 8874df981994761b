"""ClusterValues: what `mlyard k8s render|apply -f values.yaml` installs on a Kubernetes cluster.

```yaml
overlay: dev                       # dev (with a PostgreSQL + pgvector) or prod (external databases)
namespace: mlyard
image: registry.example/mlyard:0.1.0   # the platform (infra/docker/mlyard.Dockerfile, target platform): services, cpu pool
images:                            # the other images workloads run (infra/docker), pushed beside it
  training_cuda: registry.example/mlyard-training:0.1.0-cuda  # the gpu pool's flow runs (torch with CUDA)
  training_cpu: registry.example/mlyard-training:0.1.0-cpu
  serving: registry.example/mlyard-serving:0.1.0              # endpoint stages' model servers
  notebook: registry.example/mlyard-notebook:0.1.0
  prefect: registry.example/mirror/prefect:3.8.8-python3.11   # the engines' images, e.g. from a mirror (defaults:
  oauth2_proxy: registry.example/mirror/oauth2-proxy:v7.8.1   #   Docker Hub's and quay.io's); every pod gets the
  postgres: registry.example/mirror/pgvector:0.8.0-pg16       #   pull Secrets below
runtime_images:                    # optional: a runtime variant's engine image (core/runtimes.py has defaults)
  vllm: registry.example/vllm-openai:v0.11.0
image_pull_secrets: [regcred]      # optional: Secrets of type kubernetes.io/dockerconfigjson
storage_class: null                # StorageClass of runs' data storage and the dev PostgreSQL (null: the default)
projects_uri: s3://ml-bucket/projects  # the projects' storage: uploads, outputs, pipeline runs' folders
gateway_replicas: 2
secrets:                           # the Secrets the manifests name (create them first; never in these files)
  prefect: mlyard-prefect          # keys database-url, auth-string
  mlflow: mlyard-mlflow            # keys backend-store-uri, artifacts-destination
  settings: mlyard-settings        # keys mlyard_catalog_url, mlyard_s3_* (MLYARD_* settings as files)
  postgres: mlyard-postgres        # key password (dev overlay only)
gpu:
  types: [NVIDIA-A100-SXM4-80GB]   # the nvidia.com/gpu.product values of the GPU nodes
  per_node: 8                      # GPUs a node offers
  nodes: 2                         # with Kueue: the pool's quota is nodes × (per_node GPUs, cpus_per_node,
  cpus_per_node: 32                #   memory_gib_per_node); each project's queue borrows what others leave idle
  memory_gib_per_node: 256
kueue_queue: null                  # a LocalQueue (Kueue installed): the gpu pool's Jobs wait there for quota
pool_concurrency: {gpu: null, cpu: 40}  # flow runs of a pool at once (Prefect's work pool limit); null: none
database_connections:              # the most connections each process holds to its database server (pool +
  limit: 100                       #   overflow); an install that could hold more than `limit` at once is refused
  prefect: 10                      # the Prefect server
  mlflow: 3                        # each MLflow server worker
  platform: 3                      # each mlyard API, gateway and scheduler replica
  run: 1                           # each flow-run pod (a gpu pool without a limit counts its GPUs as its runs)
sign_in: false                     # true: the company's OIDC sign-in in front of every UI (Secret mlyard-oidc)
monitoring:                        # with the Prometheus operator: scrapes, alert rules, a Grafana dashboard
  enabled: false
  prometheus_namespace: monitoring # where Prometheus runs (its pods may reach the metrics ports)
  waiting_minutes: 30              # a run due this long without a worker: an alert
  volume_free_percent: 10          # a claim with less free: an alert
network:                           # what pods running a member's code (runs, stages, notebooks) reach
  internal_cidrs: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16, fc00::/7, fe80::/10]
  storage_cidrs: []                # an internal object store's addresses (MinIO in the cluster)
  database_port: 5432              # a stage's fetch reads the model registry: MLflow and this port
  api_server_cidrs: []             # the cluster API's addresses; empty: `mlyard k8s apply` reads them
  api_server_ports: [443, 6443]
  run_services:                    # more a flow run reaches: a KFP server in the cluster, a package mirror
    - {namespace: kubeflow, labels: {app: ml-pipeline}, port: 8888}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from mlyard.core.specs.common import SpecModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
IMAGE = r"^[a-z0-9]+([._/:-][a-zA-Z0-9_.-]+)*(@sha256:[a-f0-9]{64})?$"


class ClusterSecrets(SpecModel):
    model_config = ConfigDict(extra="forbid")

    prefect: str = Field(default="mlyard-prefect", pattern=DNS_LABEL, max_length=63,
                         description="Secret with the Prefect server's database-url and auth-string.")
    mlflow: str = Field(default="mlyard-mlflow", pattern=DNS_LABEL, max_length=63,
                        description="Secret with MLflow's backend-store-uri and artifacts-destination.")
    settings: str = Field(default="mlyard-settings", pattern=DNS_LABEL, max_length=63,
                          description="Secret of MLYARD_* settings as files (mlyard_catalog_url, mlyard_s3_...).")
    postgres: str | None = Field(default="mlyard-postgres", pattern=DNS_LABEL, max_length=63,
                                 description="Secret with the dev PostgreSQL's password (dev overlay).")


class ClusterImages(SpecModel):
    model_config = ConfigDict(extra="forbid")

    training_cuda: str = Field(default="mlyard-training:0.1.0-cuda", pattern=IMAGE, description="The gpu pool's "
                               "default image (infra/docker/mlyard.Dockerfile, target training-cuda: mlyard with torch and CUDA).")
    training_cpu: str = Field(default="mlyard-training:0.1.0-cpu", pattern=IMAGE,
                              description="A CPU training image (infra/docker/mlyard.Dockerfile, target training-cpu).")
    serving: str = Field(default="mlyard-serving:0.1.0", pattern=IMAGE, description="Endpoint stages' model servers "
                         "(infra/docker/mlyard.Dockerfile, target serving).")
    notebook: str = Field(default="mlyard-notebook:0.1.0", pattern=IMAGE,
                          description="Notebooks' default image (infra/docker/mlyard.Dockerfile, target notebook).")
    prefect: str = Field(default="prefecthq/prefect:3.8.8-python3.11", pattern=IMAGE, description="The Prefect "
                         "server's image (its release is the one mlyard pins: 3.8.8).")
    oauth2_proxy: str = Field(default="quay.io/oauth2-proxy/oauth2-proxy:v7.8.1", pattern=IMAGE,
                              description="The sign-in component's oauth2-proxy.")
    postgres: str = Field(default="pgvector/pgvector:0.8.0-pg16", pattern=IMAGE,
                          description="The dev overlay's PostgreSQL with pgvector.")


RUNTIME_VARIANT = Literal["vllm", "nim", "cmd", "huggingface-tgi", "sglang", "modular-max", "llama-cpp"]


class GpuNodes(SpecModel):
    model_config = ConfigDict(extra="forbid")

    types: list[str] = Field(default_factory=list, description="nvidia.com/gpu.product values of the GPU nodes; "
                             "a training asking for another type is refused. Empty: any type is accepted.")
    per_node: int = Field(default=8, ge=1, le=16, description="GPUs one node offers; a larger gpu_count is refused.")
    nodes: int = Field(default=1, ge=1, le=10000, description="GPU nodes of the pool: with Kueue, the pool's "
                       "ClusterQueue holds nodes × per_node GPUs (and their CPUs and memory) of quota.")
    cpus_per_node: int = Field(default=32, ge=1, le=1024, description="CPUs of a GPU node, for Kueue's quota.")
    memory_gib_per_node: int = Field(default=256, ge=1, le=65536, description="Memory of a GPU node in GiB, "
                                     "for Kueue's quota.")


class PoolLimits(SpecModel):
    model_config = ConfigDict(extra="forbid")

    gpu: int | None = Field(default=None, ge=1, le=100000, description="Flow runs of the gpu pool at once (Prefect's "
                            "work pool concurrency limit; the rest wait, SCHEDULED). Unset: no limit (Kueue's quota "
                            "holds the GPUs).")
    cpu: int | None = Field(default=40, ge=1, le=100000, description="Flow runs of the cpu pool at once. Null: "
                            "no limit (then database_connections.limit must be null too).")


class Monitoring(SpecModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="The monitoring component (infra/k8s/components/monitoring: "
                          "ServiceMonitors with a scrape-only credential, alert rules, a Grafana dashboard); the "
                          "Prometheus operator's CRDs must be installed.")
    prometheus_namespace: str = Field(default="monitoring", pattern=DNS_LABEL, max_length=63,
                                      description="Prometheus's namespace: its pods may reach the metrics ports.")
    waiting_minutes: float = Field(default=30, gt=0, le=10080, description="A run due this long with no worker to "
                                   "take it raises MlyardRunsWaitingTooLong (the queue's expected wait).")
    volume_free_percent: float = Field(default=10, gt=0, lt=100, description="A claim of the namespace with less "
                                       "free space raises MlyardVolumeFilling.")


class DatabaseConnections(SpecModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=100, ge=1, le=100000, description="The database server's max_connections "
                              "(less what else uses it): an install whose processes could hold more at once is "
                              "refused. Null: not checked.")
    prefect: int = Field(default=10, ge=1, le=1000, description="Each Prefect server process (its SQLAlchemy pool "
                         "and overflow).")
    mlflow: int = Field(default=3, ge=1, le=1000, description="Each MLflow server worker.")
    platform: int = Field(default=3, ge=1, le=1000, description="Each mlyard API, gateway and scheduler replica "
                          "(the catalog).")
    run: int = Field(default=1, ge=1, le=1000, description="Each flow-run pod (the catalog).")


# Addresses of the cluster and the cloud's network: pods, Services, nodes, the API server, databases, and the
# metadata address (169.254.169.254, fd00:ec2::254). A member's model or kernel reaches none of them.
INTERNAL = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"]


class RunService(SpecModel):
    """One more place a flow run's pod reaches: pods of a namespace (with these labels) or a CIDR, on a port."""

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    labels: dict[str, str] = Field(default_factory=dict, description="Its pods' labels (none: every pod there).")
    cidr: str | None = Field(default=None, description="An address range instead of a namespace.")
    port: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _one_place(self) -> "RunService":
        import ipaddress

        if (self.namespace is None) == (self.cidr is None):
            raise ValueError("network.run_services: give each one a namespace (and labels) or a cidr, one of them")
        if self.cidr is not None:
            try:
                ipaddress.ip_network(self.cidr)
            except ValueError:
                raise ValueError(f"network.run_services: {self.cidr!r} is not a CIDR (e.g. 10.1.2.0/24)") from None
        return self


class NetworkValues(SpecModel):
    model_config = ConfigDict(extra="forbid")

    internal_cidrs: list[str] = Field(default_factory=lambda: list(INTERNAL), description="The cluster's and the "
                                      "cloud network's own addresses (pods, Services, nodes, the API server, the "
                                      "databases, the metadata address): flow runs', endpoint stages' and notebooks' "
                                      "pods, which run a member's code, reach none of them but the services each "
                                      "uses; the internet beyond, they do.")
    storage_cidrs: list[str] = Field(default_factory=list, description="The object store's addresses when they are "
                                     "internal (MinIO in the cluster, a private S3 endpoint): those pods (and the "
                                     "runs') reach these.")
    dns_namespace: str = Field(default="kube-system", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63,
                               description="Namespace of the cluster's DNS pods.")
    dns_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"},
                                       description="Labels of the cluster's DNS pods (CoreDNS keeps k8s-app: kube-dns).")
    database_port: int = Field(default=5432, ge=1, le=65535, description="The catalog database's port: an endpoint "
                               "stage's pod reads the model registry (the catalog and MLflow) to fetch its version's "
                               "files, so it reaches that port (and MLflow's) and no other of the cluster's.")
    api_server_cidrs: list[str] = Field(default_factory=list, description="The cluster API server's addresses (the "
                                        "`kubernetes` Service's IP and the endpoints behind it), kept from every pod "
                                        "that runs a member's code even where they are public. Empty: `mlyard k8s "
                                        "apply` and `diff` read them from the cluster.")
    api_server_ports: list[int] = Field(default_factory=lambda: [443, 6443], description="The API server's ports: "
                                        "the flow runs that apply objects (endpoints, notebooks, a RAG's sync, a "
                                        "multi-node training's coordinator) reach these of its addresses.")
    run_services: list[RunService] = Field(default_factory=list, description="What else a flow run's pod reaches "
                                           "of the cluster's or the company's network (a KFP server in the cluster, "
                                           "a package mirror): its member's script reaches them too.")

    @model_validator(mode="after")
    def _cidrs(self) -> "NetworkValues":
        import ipaddress

        if not self.api_server_ports or any(not 1 <= port <= 65535 for port in self.api_server_ports):
            raise ValueError(f"network.api_server_ports: {self.api_server_ports} must be ports (1-65535), at least one")
        for name in ("internal_cidrs", "storage_cidrs", "api_server_cidrs"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr)
                except ValueError:
                    raise ValueError(f"network.{name}: {cidr!r} is not a CIDR (e.g. 10.0.0.0/8)") from None
        return self

    def member_egress(self, stage: bool = False) -> list[dict]:
        """The egress rules of a pod that runs a member's code (an endpoint stage's, a notebook's): DNS, the
        internet less the internal addresses and the API server's, and the storage's; a `stage`'s also the model
        registry its fetch reads (MLflow's pods, the database's port)."""
        kept = [*self.internal_cidrs, *self.api_server_cidrs]
        v4 = [c for c in kept if ":" not in c]
        v6 = [c for c in kept if ":" in c]
        dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.dns_namespace}},
               "podSelector": {"matchLabels": dict(self.dns_labels)}}
        rules: list[dict] = [
            {"to": [dns], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": v4}}, {"ipBlock": {"cidr": "::/0", "except": v6}},
                    *({"ipBlock": {"cidr": c}} for c in self.storage_cidrs)]}]
        if stage:
            rules += [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
                       "ports": [{"port": 5000, "protocol": "TCP"}]},
                      {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}},
                              {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgres"}}}],
                       "ports": [{"port": self.database_port, "protocol": "TCP"}]}]
        return rules

    def run_egress(self) -> list[dict]:
        """A flow run's pod (and a multi-node training's node): a stage's reach, with the platform's services its
        flow code calls (Prefect, the mlyard API and gateway) and the values' `run_services`; never the API server
        (`api_egress` lets the runs that apply objects reach it) or another pod of the cluster."""
        def part(name: str, port: int) -> dict:
            return {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}],
                    "ports": [{"port": port, "protocol": "TCP"}]}

        extra = [{"to": [{"ipBlock": {"cidr": s.cidr}} if s.cidr else {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": s.namespace}},
            "podSelector": {"matchLabels": dict(s.labels)}}], "ports": [{"port": s.port, "protocol": "TCP"}]}
            for s in self.run_services]
        return [*self.member_egress(stage=True), part("prefect-server", 4200), part("mlyard-api", 8080),
                part("gateway", 8080), *extra]

    def api_egress(self) -> list[dict]:
        """The API server, on its ports: its addresses when the values name them, else wherever it is."""
        cidrs = self.api_server_cidrs or ["0.0.0.0/0", "::/0"]
        return [{"to": [{"ipBlock": {"cidr": c}} for c in cidrs],
                 "ports": [{"port": p, "protocol": "TCP"} for p in self.api_server_ports]}]


class ClusterValues(SpecModel):
    """A platform install on a Kubernetes cluster."""

    model_config = ConfigDict(extra="forbid")

    overlay: Literal["dev", "prod"] = Field(default="dev", description="infra/k8s/overlays/{overlay}.")
    namespace: str = Field(default="mlyard", pattern=DNS_LABEL, max_length=63, description="Namespace of everything.")
    image: str = Field(default="mlyard:0.1.0", pattern=IMAGE, description="The platform image (infra/docker).")
    images: ClusterImages = Field(default_factory=ClusterImages)
    runtime_images: dict[RUNTIME_VARIANT, str] = Field(default_factory=dict, description="A runtime variant's "
                                                       "engine image, over core/runtimes.py's (MLYARD_RUNTIME_IMAGES).")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Pull Secrets for the images.")
    storage_class: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253,
                                      description="StorageClass of the runs' data storage and the dev PostgreSQL's "
                                      "claim. Unset: the cluster's default one (a claim stays Pending without it).")
    projects_uri: str = Field(default="s3://mlyard/projects", pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$",
                              description="The projects' storage (MLYARD_PROJECTS_URI): each project's uploads, run "
                              "outputs and pipeline runs' folders under <projects_uri>/<project>/, in a bucket the "
                              "settings Secret's S3 credentials reach. A pod's own home goes with the pod.")
    gateway_replicas: int = Field(default=2, ge=2, le=100, description="Gateway replicas (at least 2).")
    secrets: ClusterSecrets = Field(default_factory=ClusterSecrets)
    gpu: GpuNodes = Field(default_factory=GpuNodes)
    kueue_queue: str | None = Field(default=None, pattern=DNS_LABEL, description="LocalQueue of the gpu pool.")
    pool_concurrency: PoolLimits = Field(default_factory=PoolLimits)
    network: NetworkValues = Field(default_factory=NetworkValues)
    sign_in: bool = Field(default=False, description="One OIDC sign-in in front of every UI (infra/k8s/components/"
                          "sign-in: oauth2-proxy; the Secret mlyard-oidc first).")
    monitoring: Monitoring = Field(default_factory=Monitoring)
    database_connections: DatabaseConnections = Field(default_factory=DatabaseConnections)

    @model_validator(mode="after")
    def _postgres_secret(self) -> "ClusterValues":
        if self.overlay == "dev" and not self.secrets.postgres:
            raise ValueError("secrets.postgres: the dev overlay's PostgreSQL needs its password Secret's name")
        for name in self.image_pull_secrets:
            import re

            if not re.match(DNS_LABEL, name):
                raise ValueError(f"image_pull_secrets: {name!r} is not a Secret name (lowercase letters, digits, '-')")
        return self
