"""BatchInferenceSpec, and the batch settings it shares with model evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlyard.core.names import current_deployment
from mlyard.core.specs.common import (
    NAME_PATTERN,
    Resources,
    SpecModel,
    check_uri,
    form_schema,
    is_mlflow_uri,
    is_registry_ref,
)
from mlyard.core.specs.training import TrainingSpec
from mlyard.core.uris import RELATIVE_PATHS, absolute


class BatchSettings(SpecModel):
    """Where the model runs and how it is fed: shared by batch inference and model evaluation."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=form_schema)

    model: str = Field(description="Registry reference, e.g. digits@champion or digits/3, or a model URI: runs:/, "
                                   "models:/, s3://, obs://, nas://, file:// or ./path to an MLflow model. "
                                   + RELATIVE_PATHS)
    output_uri: str = Field(description="Where predictions go: a NAME.predictions.jsonl for each input file NAME, "
                                        "with _summary.json and _failures.jsonl. " + RELATIVE_PATHS)
    id_field: str | None = Field(default=None, description="Input field copied to each prediction to join them back, e.g. id "
                                                           "(the row number is always kept).")
    feature_fields: list[str] | None = Field(
        default=None, description="Input fields fed to the model, in order (default: every field but the id and "
        "label). A single field holding a list is used as the feature vector.")
    drop_fields: list[str] = Field(default_factory=list, description="Input fields never fed to the model, e.g. comment.")
    batch_size: int = Field(default=256, ge=1, le=100_000, description="Rows per model call.")
    inference_timeout_seconds: float = Field(default=60, gt=0, le=86_400,
                                             description="Longest one model call may take; a slower batch is recorded as failed.")
    workers: int = Field(default=1, ge=1, le=64, description="Parallel workers (pods), each loading the model once.")
    instances: int = Field(default=1, ge=1, le=64, description="Instances the workers run on (worker_deployment on a "
                           "Kubernetes pool): `resources` is one instance's; its pods share it evenly (appendix 9) "
                           "and the pods spread evenly over nodes.")
    worker_deployment: str | None = Field(
        default=None, pattern=r"^[\w.-]+/[\w.-]+$",
        description="Run each worker as its own flow run of this deployment (batch-inference-worker/"
        "batch-inference-worker-gpu: a pod per worker). Default: workers are processes of this run.")
    max_failed_batches: int = Field(default=10, ge=0, description="Fail once more batches than this failed "
                                                                   "(0: the first failure fails the job).")
    max_run_time_seconds: int | None = Field(default=None, ge=1, description="Stop with a failure after this long, e.g. 3600 (default: no limit).")
    image: str | None = Field(default=None, description="Container image on the Kubernetes pool, e.g. a registered image's name; ignored locally.")
    resources: Resources = Field(default_factory=Resources, description="CPU, memory and GPUs per worker on the Kubernetes pool.")

    @field_validator("worker_deployment")
    @classmethod
    def _worker_deployment_named_now(cls, value: str | None) -> str | None:
        return value if value is None else current_deployment(value)  # `train/local` as named before: train-local

    @field_validator("output_uri", "input_uri", check_fields=False)  # input_uri: declared by each subclass
    @classmethod
    def _locations(cls, value: str, info) -> str:
        check_uri(info.field_name, value)
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("give a model: name@alias, name/version or a model URI")
        if not is_registry_ref(value) and not is_mlflow_uri(value):
            check_uri("model", value)
        return value

    def job_variables(self) -> dict[str, Any]:
        """Job variables of the run's own pod: it asks for `resources`, as a training's node does."""
        return TrainingSpec.node_resources(self)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _instances(self):
        if self.instances > self.workers:
            raise ValueError(f"instances ({self.instances}) more than workers ({self.workers}): each instance runs "
                             "at least one worker pod")
        per = self.pods_per_instance
        if self.resources.gpu_count and self.resources.gpu_count < per:
            raise ValueError(f"resources.gpu_count ({self.resources.gpu_count}) is less than the {per} worker pods per "
                             "instance: give each pod a GPU (fewer workers, more instances, or more GPUs)")
        return self

    @property
    def pods_per_instance(self) -> int:
        return -(-self.workers // self.instances)

    def worker_job_variables(self, batch_id: str) -> dict[str, Any]:
        """Job variables of each worker's pod (worker_deployment on a Kubernetes pool): an instance's
        `resources` divided by its pods (GPUs whole: with a remainder some stay unused, as the seed
        warns), labelled with the batch and spread evenly over nodes (maxSkew 1 per hostname)."""
        per, r = self.pods_per_instance, self.resources
        jv: dict[str, Any] = {"gpu_count": r.gpu_count // per}
        if r.gpu_type:
            jv["gpu_type"] = r.gpu_type
        if r.cpu:
            jv["cpu_request"] = jv["cpu_limit"] = f"{int(r.cpu * 1000 // per)}m"
        if r.memory:
            jv["memory_request"] = jv["memory_limit"] = f"{_mebibytes(r.memory) // per}Mi"
        if r.data_storage:
            jv["data_storage_size"] = f"{_mebibytes(r.data_storage) // per}Mi"
        if self.image:
            jv["image"] = self.image
        label = {"mlyard.io/batch": batch_id[:63]}
        jv["labels"] = label
        jv["topology_spread"] = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                  "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": label}}]
        return jv

    def resolved(self, base: Path):
        """A copy whose relative local paths (input, output, a model directory) are absolute against `base`."""
        updates = {f: absolute(getattr(self, f), base) for f in ("input_uri", "output_uri")}
        if not is_registry_ref(self.model) and not is_mlflow_uri(self.model):
            updates["model"] = absolute(self.model, base)
        return self.model_copy(update=updates)


class BatchInferenceSpec(BatchSettings):
    """Batch inference: run a model over every row of the input files and write aligned predictions."""

    FORM_FIRST: ClassVar[tuple[str, ...]] = ("name", "description", "experiment", "model", "input_uri", "input_format",
                                             "include", "exclude", "output_uri", "id_field")

    name: str = Field(pattern=NAME_PATTERN, description="Batch inference name: lowercase letters, digits and '-', at most 50; e.g. digits-nightly.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str = Field(default="batch-inference", min_length=1, max_length=100,
                            description="MLflow experiment of the run that records the summary.")
    input_uri: str = Field(description="A file or a directory of files: path, file://, s3://, obs:// or nas://. "
                                       + RELATIVE_PATHS)
    input_format: Literal["json", "jsonl", "csv"] = Field(
        description="json: a file holding a list of records or {\"instances\": [...]}; jsonl: a record per line; "
        "csv: a header line and a row per line.")
    include: list[str] = Field(default_factory=lambda: ["**"], description="Glob patterns of input files to take, e.g. **/*.jsonl.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of input files to skip (exclude wins), e.g. tmp/**.")
    output_probabilities: bool = Field(default=True, description="Also write class probabilities where the model has predict_proba.")

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, value: list[str], info) -> list[str]:
        if info.field_name == "include" and not value:
            raise ValueError("include is empty: give at least one pattern, e.g. ['**/*.jsonl']")
        for pattern in value:
            if not pattern.strip() or pattern.startswith("/"):
                raise ValueError(f"glob {pattern!r} must be a relative pattern such as '*.jsonl' or 'day=*/**'")
        return value



# -- the batch job: one worker's share, whichever way it runs --------------------------------------------

class BatchShard(SpecModel):
    """A piece of the input one worker reads: a whole file, or a line range of a big JSONL file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = Field(description="Input file, relative to the batch inference's input_uri.")
    index: int = Field(default=0, ge=0, description="Which shard of the file (0-based).")
    count: int = Field(default=1, ge=1, description="Shards of the file.")
    start: int = Field(default=0, ge=0, description="Byte offset of the first line.")
    end: int | None = Field(default=None, description="Byte offset past the last line (None: the end of the file).")
    first_row: int = Field(default=0, ge=0, description="Row number of the first line.")
    size: int = Field(default=0, ge=0, description="Bytes.")

    @property
    def key(self) -> str:
        return f"{self.file}#{self.index + 1}-of-{self.count}"


class BatchJob(SpecModel):
    """One worker's share of a batch inference, filled in by the batch inference (not by hand). The
    same typed job runs in process, as a local process, or as a flow run of the worker deployment (on
    a Kubernetes pool: a pod): every location in it is a URI any of them can read, and the local
    copies the batch inference already made are used where they exist."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(description="The batch inference this job belongs to.")
    model_uri: str = Field(description="The pinned model: models:/name/version or a model location.")
    model_path: str | None = Field(default=None, description="A local copy of the model, used where it exists.")
    output_uri: str = Field(description="The batch inference's output_uri.")
    input_format: Literal["json", "jsonl", "csv"] = Field(description="How the input files are read.")
    batch_size: int = Field(ge=1, description="Rows per model call.")
    inference_timeout_seconds: float = Field(gt=0, description="Longest one model call may take.")
    max_failed_batches: int = Field(ge=0, description="Give up once more batches than this failed.")
    output_probabilities: bool = Field(description="Also write class probabilities.")
    id_field: str | None = Field(default=None, description="Input field copied to each prediction.")
    feature_fields: list[str] | None = Field(default=None, description="Input fields fed to the model.")
    drop_fields: list[str] = Field(default_factory=list, description="Input fields never fed to the model.")
    inputs: dict[str, str] = Field(description="Input file -> its URI under input_uri.")
    local_inputs: dict[str, str] = Field(default_factory=dict,
                                         description="Input file -> a local copy, used where it exists.")
    shards: list[BatchShard] = Field(default_factory=list, description="The shards this job runs.")
    scratch: str | None = Field(default=None, description="Working directory to use where it exists.")

    def with_shards(self, shards: list[BatchShard]) -> BatchJob:
        return self.model_copy(update={"shards": list(shards)})


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def _mebibytes(quantity: str) -> int:
    """A Kubernetes quantity (the Resources pattern: digits and a unit) in whole MiB."""
    import re

    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", quantity).groups()  # type: ignore[union-attr]
    return int(float(number) * _UNITS[unit or ""] // 2**20)
