"""BatchInferenceSpec, and the batch settings it shares with model evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlyard.specs.common import NAME_PATTERN, Resources, _check_uri, is_mlflow_uri, is_registry_ref
from mlyard.specs.training import TrainingSpec
from mlyard.uris import RELATIVE_PATHS, absolute


def _form_order(schema: dict[str, Any], cls: type) -> None:
    """Put what a user fills in first (name, model, input) at the top of the Prefect UI's form; the
    shared batch settings come after."""
    props = schema.get("properties", {})
    first = [k for k in getattr(cls, "FORM_FIRST", ()) if k in props]
    schema["properties"] = {**{k: props[k] for k in first}, **{k: v for k, v in props.items() if k not in first}}


class _BatchSettings(BaseModel):
    """Where the model runs and how it is fed: shared by batch inference and model evaluation."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_form_order)

    model: str = Field(description="Registry reference (name@alias or name/version) or a model URI: runs:/, "
                                   "models:/, s3://, obs://, nas://, file:// or ./path to an MLflow model. "
                                   + RELATIVE_PATHS)
    output_uri: str = Field(description="Where predictions go: a NAME.predictions.jsonl for each input file NAME, "
                                        "with _summary.json and _failures.jsonl. " + RELATIVE_PATHS)
    id_field: str | None = Field(default=None, description="Input field copied to each prediction to join them back "
                                                           "(the row number is always kept).")
    feature_fields: list[str] | None = Field(
        default=None, description="Input fields fed to the model, in order (default: every field but the id and "
        "label). A single field holding a list is used as the feature vector.")
    drop_fields: list[str] = Field(default_factory=list, description="Input fields never fed to the model.")
    batch_size: int = Field(default=256, ge=1, le=100_000, description="Rows per model call.")
    inference_timeout_seconds: float = Field(default=60, gt=0, le=86_400,
                                             description="Longest one model call may take; a slower batch is recorded as failed.")
    workers: int = Field(default=1, ge=1, le=64, description="Parallel workers (pods), each loading the model once.")
    worker_deployment: str | None = Field(
        default=None, pattern=r"^[\w.-]+/[\w.-]+$",
        description="Run each worker as its own flow run of this deployment (batch-inference-worker/gpu: a pod "
        "per worker). Default: workers are processes of this run.")
    max_failed_batches: int = Field(default=10, ge=0, description="Fail once more batches than this failed "
                                                                   "(0: the first failure fails the job).")
    max_run_time_seconds: int | None = Field(default=None, ge=1, description="Stop with a failure after this long.")
    image: str | None = Field(default=None, description="Container image on the Kubernetes pool; ignored locally.")
    resources: Resources = Field(default_factory=Resources, description="CPU, memory and GPUs per worker on the Kubernetes pool.")

    @field_validator("output_uri", "input_uri", check_fields=False)  # input_uri: declared by each subclass
    @classmethod
    def _locations(cls, value: str, info) -> str:
        _check_uri(info.field_name, value)
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("give a model: name@alias, name/version or a model URI")
        if not is_registry_ref(value) and not is_mlflow_uri(value):
            _check_uri("model", value)
        return value

    job_variables = TrainingSpec.job_variables

    def resolved(self, base: Path):
        """A copy whose relative local paths (input, output, a model directory) are absolute against `base`."""
        updates = {f: absolute(getattr(self, f), base) for f in ("input_uri", "output_uri")}
        if not is_registry_ref(self.model) and not is_mlflow_uri(self.model):
            updates["model"] = absolute(self.model, base)
        return self.model_copy(update=updates)


class BatchInferenceSpec(_BatchSettings):
    """Batch inference: run a model over every row of the input files and write aligned predictions."""

    FORM_FIRST: ClassVar[tuple[str, ...]] = ("name", "description", "experiment", "model", "input_uri", "input_format",
                                             "include", "exclude", "output_uri", "id_field")

    name: str = Field(pattern=NAME_PATTERN, description="Batch inference name: lowercase letters, digits and '-', at most 50.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str = Field(default="batch-inference", min_length=1, max_length=100,
                            description="MLflow experiment of the run that records the summary.")
    input_uri: str = Field(description="A file or a directory of files: path, file://, s3://, obs:// or nas://. "
                                       + RELATIVE_PATHS)
    input_format: Literal["json", "jsonl", "csv"] = Field(
        description="json: a file holding a list of records or {\"instances\": [...]}; jsonl: a record per line; "
        "csv: a header line and a row per line.")
    include: list[str] = Field(default_factory=lambda: ["**"], description="Glob patterns of input files to take.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of input files to skip (exclude wins).")
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

