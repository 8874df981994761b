"""EndpointSpec: an endpoint, its stages and their stage resources, with the statuses each one goes
through (DESIGN §8). Pure pydantic: a bad spec fails here, naming the field, before anything starts.

An endpoint has a unique name, a description, a default stage, and is either open to the public or
token-protected. A stage (unique within its endpoint) has an instance type and count and the node
autoscaler's settings. A stage resource serves one model version with a resource allocation, a pod
count and the pod autoscaler (CPU or memory, threshold); several resources of one stage share its
requests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlyard.core.names import GATEWAY_PREFIXES
from mlyard.core.specs.common import NAME_PATTERN, SpecModel, is_registry_ref

# Each resource's statuses, as the console lists them.
# STOPPED is VRidge's: a server (a one-stage endpoint) whose replicas were stopped, its configuration kept.
ENDPOINT_STATUSES = ("CREATE REQUESTED", "CREATE IN PROGRESS", "UPDATE IN PROGRESS", "DELETE IN PROGRESS", "ACTIVE",
                     "CREATE FAILED", "UPDATE FAILED", "STOPPED")
STAGE_STATUSES = ("CREATE REQUESTED", "CREATE IN PROGRESS", "DEPLOY IN PROGRESS", "UPDATE IN PROGRESS",
                  "DELETE IN PROGRESS", "ACTIVE", "CREATE FAILED", "DEPLOY FAILED", "UPDATE FAILED", "STOPPED")
RESOURCE_STATUSES = ("CREATE REQUESTED", "CREATE IN PROGRESS", "UPDATE IN PROGRESS", "DELETE IN PROGRESS", "ACTIVE",
                     "CREATE FAILED", "UPDATE FAILED", "STOPPED")
# The gateway's own state of a stage (the console's "API Gateway status").
GATEWAY_STATUSES = ("CREATE IN PROGRESS", "STAGE DEPLOYING", "ACTIVE", "NOT FOUND: STAGE",
                    "NOT FOUND: STAGE DEPLOY RESULT", "STAGE DEPLOY FAIL")
BUSY = ("CREATE REQUESTED", "CREATE IN PROGRESS", "DEPLOY IN PROGRESS", "UPDATE IN PROGRESS", "DELETE IN PROGRESS")
DEFAULT_STAGE = "default"
MAX_STAGES = 10
MAX_RESOURCES = 10


class NodeAutoscaler(SpecModel):
    """The node autoscaler of a stage's node pool (cluster-autoscaler settings on Kubernetes)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Scale the stage's nodes with their load.")
    min_nodes: int = Field(default=1, ge=1, le=100, description="Fewest nodes it may scale down to.")
    max_nodes: int = Field(default=10, ge=1, le=100, description="Most nodes it may scale up to.")
    scale_down: bool = Field(default=True, description="Whether nodes are ever removed.")
    usage_threshold_percent: int = Field(default=50, ge=1, le=100,
                                         description="A node below this resource usage may be removed.")
    threshold_duration_minutes: int = Field(default=10, ge=1, le=1440,
                                            description="How long a node stays below the threshold before removal.")
    scale_down_delay_minutes: int = Field(default=10, ge=1, le=1440,
                                          description="After a scale-up, how long before nodes are watched for removal.")

    @model_validator(mode="after")
    def _bounds(self) -> "NodeAutoscaler":
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) must not exceed max_nodes ({self.max_nodes})")
        return self


class PodAutoscaler(SpecModel):
    """The pod autoscaler of a stage resource (a HorizontalPodAutoscaler on Kubernetes)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Scale the resource's pods with their load.")
    metric: Literal["cpu", "memory"] = Field(default="cpu", description="What the pod count follows: cpu or memory.")
    threshold_percent: int = Field(default=80, ge=1, le=100,
                                   description="Average usage (percent of the allocation) above which pods are added.")
    max_pods: int = Field(default=5, ge=1, le=100, description="Most pods it may scale up to.")


RUNTIME_VARIANTS = ("vllm", "nim", "cmd", "huggingface-tgi", "sglang", "modular-max", "llama-cpp", "custom")


class RuntimeSpec(SpecModel):
    """The inference engine that serves a stage resource's model folder (Backend.AI's runtime variants,
    serving/variants.py): every variant but custom brings its own model definition."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["vllm", "nim", "cmd", "huggingface-tgi", "sglang", "modular-max", "llama-cpp", "custom"] = Field(
        description="vllm, nim, cmd (the image's own command), huggingface-tgi, sglang, modular-max, llama-cpp, or "
                    "custom (the folder's model-definition.yaml).")
    args: list[str] = Field(default_factory=list, max_length=64,
                            description="Extra engine flags after the variant's command (for cmd and nim, the "
                                        "command itself: container arguments replace the image's command).")
    environ: dict[str, str] = Field(default_factory=dict, description="The engine's environment, over the "
                                                                      "folder's service-definition.toml.")
    image: str | None = Field(default=None, max_length=255, description="On a cluster, the engine's image (default: "
                                                                        "service-definition.toml's, else the variant's).")

    @field_validator("environ")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", k)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name (letters, digits, _)")
        return value


class StageResourceSpec(SpecModel):
    """One model version served by a stage."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model version: name/version or name@alias (resolved to its version when "
                                   "deployed).")
    description: str = Field(default="", max_length=255, description="What this resource is for.")
    cpu: float = Field(default=1.0, gt=0, le=256, description="CPU cores per pod (request and limit).")
    memory: str = Field(default="1Gi", pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
                        description="Memory per pod in Kubernetes units, e.g. 2Gi.")
    gpu: int = Field(default=0, ge=0, le=16, description="GPUs per pod.")
    pods: int = Field(default=1, ge=1, le=100, description="Pods (replicas) to start.")
    pod_autoscaler: PodAutoscaler = Field(default_factory=PodAutoscaler, description="Pod autoscaling.")
    runtime: RuntimeSpec | None = Field(default=None, description="An inference engine for a model folder (runtime: "
                                        "vllm, or {variant: vllm, args: [...], environ: {...}}); none: mlyard's server.")

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime(cls, value: object) -> object:
        return {"variant": value} if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not is_registry_ref(value):
            raise ValueError("a registered model version: name/version or name@alias")
        return value

    @model_validator(mode="after")
    def _pods(self) -> "StageResourceSpec":
        if self.pod_autoscaler.enabled and self.pod_autoscaler.max_pods < self.pods:
            raise ValueError(f"pod_autoscaler.max_pods ({self.pod_autoscaler.max_pods}) must be at least pods "
                             f"({self.pods})")
        return self


class StageSpec(SpecModel):
    """A stage of an endpoint: where its resources run and how its nodes scale."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default=DEFAULT_STAGE, pattern=NAME_PATTERN,
                      description="Unique within the endpoint: lowercase letters, digits and '-', at most 50.")
    description: str = Field(default="", max_length=255, description="What this stage is for.")
    instance_type: str = Field(default="local", max_length=64,
                               description="The node type it runs on (a node pool on Kubernetes; 'local' here).")
    instance_count: int = Field(default=1, ge=1, le=100, description="Nodes to start.")
    node_autoscaler: NodeAutoscaler = Field(default_factory=NodeAutoscaler, description="Node autoscaling.")
    autoscaling_rules: list["AutoscalingRule"] = Field(
        default_factory=list, max_length=10,
        description="Backend.AI autoscaling rules for each resource's replicas (applied by the gateway, locally).")
    max_replicas: int | None = Field(default=None, ge=1, le=100,
                                     description="The most replicas any resource of this stage runs, however it is "
                                                 "scaled (AI Toolkit's maximumInstanceCount); unset: no cap but the "
                                                 "rules' own (and 8 in all on one machine).")
    resources: list[StageResourceSpec] = Field(min_length=1, max_length=MAX_RESOURCES,
                                               description="The model versions it serves; they share its requests.")

    @model_validator(mode="after")
    def _cap(self) -> "StageSpec":
        if self.max_replicas is None:
            return self
        for i, res in enumerate(self.resources):
            if res.pods > self.max_replicas:
                raise ValueError(f"resources[{i}].pods ({res.pods}) exceeds max_replicas ({self.max_replicas})")
        for i, rule in enumerate(self.autoscaling_rules):
            if rule.max_replicas > self.max_replicas:
                raise ValueError(f"autoscaling_rules[{i}].max_replicas ({rule.max_replicas}) exceeds the stage's "
                                 f"max_replicas ({self.max_replicas})")
        return self


class EndpointSpec(SpecModel):
    """An endpoint and its first (default) stage."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique: lowercase letters, digits and '-', at most 50.")
    description: str = Field(default="", max_length=255, description="What this endpoint is for.")
    public: bool = Field(default=False, description="Open to the public (no token needed); else every request "
                                                    "needs a token of this endpoint.")
    max_request_bytes: int | None = Field(
        default=None, ge=1024, le=1024 ** 3, description="The largest request body the gateway takes for this "
        "endpoint (413 above it, before a replica sees it; its replicas take the same). Unset: the platform's "
        "(MLYARD_MAX_REQUEST_BYTES, 32 MiB).")
    stage: StageSpec = Field(description="The default stage, created with the endpoint.")

    @field_validator("name")
    @classmethod
    def _not_a_gateway_route(cls, name: str) -> str:
        if name in GATEWAY_PREFIXES:
            raise ValueError(f"{name!r} is a path of the gateway's own ({', '.join(f'/{p}/' for p in GATEWAY_PREFIXES)}): "
                             "an endpoint of that name could never be reached; choose another name")
        return name


def body_limit_args(max_request_bytes: int | None, platform_limit: int) -> list[str]:
    """`mlyard serve`'s body limit for an endpoint's replicas: the gateway's for that endpoint, so that the
    gateway never takes (and holds) a body its replicas would refuse."""
    return ["--max-body-mb", str((max_request_bytes or platform_limit) / 2**20)]


COMPARATORS = ("LESS_THAN", "LESS_THAN_OR_EQUAL", "GREATER_THAN", "GREATER_THAN_OR_EQUAL")


class AutoscalingRule(SpecModel):
    """A Backend.AI autoscaling rule: when the metric compares with the threshold, change the replica
    count by `step_size`, within min and max replicas, then wait `cooldown_seconds` before this rule
    applies again."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["scale_up", "scale_down"] = Field(description="Whether the rule adds or removes replicas.")
    metric_source: Literal["inference_framework", "kernel"] = Field(
        default="inference_framework", description="inference_framework: the replicas' own metrics (averaged over "
        "them); kernel: the processes' CPU and memory (averaged over them).")
    metric_name: str = Field(min_length=1, max_length=100, description="The metric compared, e.g. "
                                                                       "requests_per_second, p99_ms, cpu_percent.")
    comparator: Literal["LESS_THAN", "LESS_THAN_OR_EQUAL", "GREATER_THAN", "GREATER_THAN_OR_EQUAL"] = Field(
        description="How the metric is compared with the threshold.")
    threshold: float = Field(description="The value the metric is compared with.")
    step_size: int = Field(description="Replicas added (positive) or removed (negative) when the rule fires.")
    min_replicas: int = Field(default=1, ge=0, le=100, description="The rule never takes the count below this.")
    max_replicas: int = Field(default=5, ge=1, le=100, description="The rule never takes the count above this.")
    cooldown_seconds: int = Field(default=300, ge=0, le=86_400,
                                  description="After the rule fires, how long before it may fire again.")

    @model_validator(mode="after")
    def _consistent(self) -> "AutoscalingRule":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})")
        if self.step_size == 0:
            raise ValueError("step_size must not be 0")
        if (self.type == "scale_up") != (self.step_size > 0):
            raise ValueError(f"a {self.type} rule needs a {'positive' if self.type == 'scale_up' else 'negative'} "
                             f"step_size (got {self.step_size})")
        return self


StageSpec.model_rebuild()
EndpointSpec.model_rebuild()


class StageChangeSpec(SpecModel):
    """A new stage for an existing endpoint (`add-endpoint-stage`)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(pattern=NAME_PATTERN, description="The endpoint to add the stage to.")
    stage: StageSpec = Field(description="The new stage; it takes requests at its own URL until it is promoted.")


class PromotionSpec(SpecModel):
    """Make a stage the endpoint's default (`promote-endpoint-stage`): its traffic moves at once and the
    old default stage's resources are deleted once its last requests are answered."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(pattern=NAME_PATTERN, description="The endpoint.")
    stage: str = Field(pattern=NAME_PATTERN, description="The ACTIVE stage that becomes the default.")
    keep_old: bool = Field(default=False, description="Keep the old default stage (as a non-default stage) "
                                                      "instead of deleting it.")


CODE_KINDS = ("entry-script", "model-folder")


class SyncSpec(SpecModel):
    """Deploy the latest code of an entry-script or model-folder endpoint (`sync-endpoint-code`, AI
    Toolkit's deploy for inference): the folder becomes a new version of a registered model; a new
    endpoint is created with it, an existing one has its default stage's replicas replaced by it one at
    a time, with no failed request. The endpoint's URL is written to `config` (inference.config.json)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(pattern=NAME_PATTERN, description="The endpoint; created when it does not exist.")
    source: str = Field(min_length=1, description="The folder to push: an entry script (init() and run()) with what "
                                                  "it loads, or a model folder (model-definition.yaml).")
    kind: Literal["entry-script", "model-folder"] | None = Field(
        default=None, description="What the folder holds; unset: model-folder when it has a model-definition.yaml, "
                                  "else entry-script.")
    entry_script: str = Field(default="score.py", min_length=1,
                              description="The entry script, relative to the folder (entry-script only).")
    model: str | None = Field(default=None, pattern=NAME_PATTERN,
                              description="The registered model the folder becomes a version of (default: the "
                                          "endpoint's name).")
    replicas: int = Field(default=1, ge=1, le=100, description="Replicas of a new endpoint (an existing one keeps "
                                                               "its count).")
    max_replicas: int | None = Field(default=None, ge=1, le=100,
                                     description="maximumInstanceCount: the most replicas the endpoint may run "
                                                 "(default: infra/provision/inference.parameters.json's, if any).")
    public: bool = Field(default=False, description="A new endpoint is open to the public (no token).")
    config: str | None = Field(default=None, description="Where the endpoint's URL is written (default: "
                                                         "SOURCE/infra/inference.config.json).")

    @model_validator(mode="after")
    def _cap(self) -> "SyncSpec":
        if self.max_replicas is not None and self.replicas > self.max_replicas:
            raise ValueError(f"replicas ({self.replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class DeletionSpec(SpecModel):
    """Delete a stage, or the endpoint with its default stage (`delete-endpoint`)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(pattern=NAME_PATTERN, description="The endpoint.")
    stage: str | None = Field(default=None, pattern=NAME_PATTERN,
                              description="A non-default stage to delete; unset: the endpoint itself (refused "
                                          "while it has stages other than the default).")
