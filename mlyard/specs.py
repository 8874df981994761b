"""Typed specs: the flow's parameter, the YAML a user passes, and the Python argument (DESIGN §3).

Pure pydantic; a bad spec fails here, before anything starts, naming the field and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlyard.errors import SpecError
from mlyard.uris import RELATIVE_PATHS, absolute, parse_uri

MAX_HYPERPARAMETERS = 100
MAX_DATASETS = 10
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$"
# Katib's default metric filter: `name=value`, one or more per line.
KATIB_METRIC_PATTERN = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"


class Resources(BaseModel):
    """What a training needs from the pool. Used by the Kubernetes pool; the local pool runs on this machine."""

    model_config = ConfigDict(extra="forbid")

    cpu: float | None = Field(default=None, gt=0, description="CPU cores (request and limit), e.g. 4 or 0.5.")
    memory: str | None = Field(
        default=None, pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
        description="Memory (request and limit) in Kubernetes units, e.g. 16Gi.",
    )
    gpu_count: int = Field(default=0, ge=0, le=16, description="GPUs per node (nvidia.com/gpu).")
    gpu_type: str | None = Field(
        default=None, description="GPU type, matched against the node label nvidia.com/gpu.product."
    )


class TrainingSpec(BaseModel):
    """A training: run an algorithm's entry point with hyperparameters and datasets (EasyMaker contract)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Training name: lowercase letters, digits and '-', at most 50.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str = Field(default="default", min_length=1, max_length=100,
                            description="MLflow experiment that groups this training (created if missing).")
    source_uri: str = Field(description="Directory of the algorithm: path, file://, s3://, obs:// or nas://. "
                                        + RELATIVE_PATHS)
    entry_point: str = Field(description="Script inside source_uri that starts the training, e.g. train.py.")
    hyperparameters: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description=f"At most {MAX_HYPERPARAMETERS}; passed as --key value, EM_HP_<KEY> and EM_HPS (JSON).",
    )
    datasets: dict[str, str] = Field(
        default_factory=dict,
        description=f"At most {MAX_DATASETS}; name -> URI, staged in and passed as EM_DATASET_<NAME>.",
    )
    checkpoint_input_uri: str | None = Field(default=None, description="Checkpoint to resume from (EM_CHECKPOINT_INPUT_DIR).")
    output_uri: str | None = Field(default=None, description="Where the model directory is copied when the training completes.")
    checkpoint_output_uri: str | None = Field(default=None, description="Where EM_CHECKPOINT_DIR is copied at the end.")
    image: str | None = Field(default=None, description="Container image on the Kubernetes pool; ignored locally.")
    resources: Resources = Field(default_factory=Resources, description="CPU, memory and GPUs on the Kubernetes pool.")
    nodes: int = Field(default=1, ge=1, le=32, description="Distributed node count (more than 1 needs the Kubernetes pool).")
    torchrun: bool = Field(default=False, description="Start the entry point with torchrun (PyTorch).")
    processes_per_node: int = Field(default=1, ge=1, le=64, description="torchrun --nproc_per_node.")
    max_run_time_seconds: int | None = Field(default=None, ge=1, description="Fail the training after this long.")
    collect_logs: bool = Field(default=True, description="Stream the script's output to the Prefect log and keep it in MLflow.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags (e.g. a parent run).")
    metric_patterns: list[str] = Field(
        default_factory=lambda: [KATIB_METRIC_PATTERN],
        description="Regexes matched against each output line; group 1 is the metric name, group 2 its value. "
        "Default: Katib's name=value.",
    )

    @field_validator("hyperparameters")
    @classmethod
    def _hyperparameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_HYPERPARAMETERS:
            raise ValueError(f"at most {MAX_HYPERPARAMETERS} hyperparameters, got {len(value)}")
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
                raise ValueError(f"hyperparameter name {key!r} must start with a letter or '_' and use letters, digits, '_', '.', '-'")
        return value

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_DATASETS:
            raise ValueError(f"at most {MAX_DATASETS} datasets, got {len(value)}")
        for name, uri in value.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"dataset name {name!r} must be letters, digits and '_' (it becomes EM_DATASET_{name.upper()})")
            _check_uri(f"datasets.{name}", uri)
        return value

    @field_validator("source_uri", "checkpoint_input_uri", "output_uri", "checkpoint_output_uri")
    @classmethod
    def _uri(cls, value: str | None, info) -> str | None:
        if value is not None:
            _check_uri(info.field_name, value)
        return value

    @field_validator("entry_point")
    @classmethod
    def _entry_point(cls, value: str) -> str:
        if not value or value.startswith("/") or ".." in Path(value).parts:
            raise ValueError(f"entry point {value!r} must be a relative path inside source_uri, e.g. train.py")
        return value

    @field_validator("metric_patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _regex(pattern, 2, f"metric pattern {pattern!r} needs a name group and a value group")
        return value

    @model_validator(mode="after")
    def _torchrun(self) -> "TrainingSpec":
        if self.processes_per_node > 1 and not self.torchrun:
            raise ValueError("processes_per_node > 1 needs torchrun: true")
        return self

    def resolved(self, base: Path) -> "TrainingSpec":
        """A copy whose relative local paths are absolute against `base` (the submitter's directory)."""
        updates: dict[str, Any] = {f: absolute(getattr(self, f), base) for f in
                                   ("source_uri", "checkpoint_input_uri", "output_uri", "checkpoint_output_uri")
                                   if getattr(self, f)}
        updates["datasets"] = {k: absolute(v, base) for k, v in self.datasets.items()}
        return self.model_copy(update=updates)

    def job_variables(self) -> dict[str, Any]:
        """Job variables of the Kubernetes pool's base job template (infra/gpu-job-template.json)."""
        r = self.resources
        jv: dict[str, Any] = {"gpu_count": r.gpu_count}
        if r.gpu_type:
            jv["gpu_type"] = r.gpu_type
        if r.cpu:
            jv["cpu_request"] = jv["cpu_limit"] = f"{r.cpu:g}"
        if r.memory:
            jv["memory_request"] = jv["memory_limit"] = r.memory
        if self.image:
            jv["image"] = self.image
        return jv

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainingSpec":
        """A copy with `overrides` merged in (nested mappings such as hyperparameters are merged)."""
        return with_overrides(self, overrides)


def _regex(pattern: str, min_groups: int, too_few: str) -> re.Pattern:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"regex {pattern!r} does not compile: {exc}") from exc
    if compiled.groups < min_groups:
        raise ValueError(too_few)
    return compiled


def _check_uri(field: str, uri: str) -> None:
    try:
        parse_uri(uri, field)
    except SpecError as exc:
        raise ValueError(exc.expected) from None


def load_spec(model: type[BaseModel], data: Any, source: str = "spec"):
    """Validate `data` as `model`, turning pydantic's report into one SpecError naming every bad field."""
    if not isinstance(data, dict):
        raise SpecError(source, type(data).__name__, f"a mapping of {model.__name__} fields")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field; allowed: {', '.join(model.model_fields)}"
            elif err["type"] == "missing":
                msg = "is required"
            value = err.get("input")
            shown = "" if err["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
            problems.append(f"{loc}: {msg}{shown}")
        field = ".".join(str(p) for p in exc.errors()[0]["loc"])
        error = SpecError(field, data.get(field.split(".")[0]), "; ".join(problems))
        error.args = (f"invalid {model.__name__} in {source}:\n  " + "\n  ".join(problems),)
        raise error from None


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, mapping by mapping: {a: {b: 1}} + {a: {c: 2}} = {a: {b: 1, c: 2}}."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def with_overrides(spec: BaseModel, overrides: dict[str, Any], source: str = "overrides"):
    """A validated copy of `spec` with `overrides` merged in (see `merged`)."""
    if not overrides:
        return spec
    return load_spec(type(spec), merged(spec.model_dump(mode="json", exclude_unset=True), overrides), source=source)


def load_spec_file(model: type[BaseModel], path: str | Path):
    """Read a YAML (or JSON) spec file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError("file", str(path), "a YAML spec file that exists")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpecError("file", str(path), f"a YAML file that parses ({exc})") from exc
    return load_spec(model, data, source=str(path))


# -- hyperparameter tuning ------------------------------------------------------------------------

class HyperparameterSpec(BaseModel):
    """One hyperparameter to search: a range (min/max, step for grid) or a list of values."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", description="Passed to the script as --name value.")
    type: Literal["int", "double", "categorical"] = Field(description="int, double or categorical.")
    min: float | None = Field(default=None, description="Smallest value (int and double).")
    max: float | None = Field(default=None, description="Largest value (int and double).")
    step: float | None = Field(default=None, description="Grid step (int and double); grid needs it.")
    values: list[str | int | float] | None = Field(
        default=None, description="Fixed values instead of a range, e.g. [sgd, adam] or 'sgd,adam'.")

    @field_validator("values", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> "HyperparameterSpec":
        if self.values is not None:
            if not self.values:
                raise ValueError(f"{self.name}: values is empty; give at least one value")
            return self
        if self.type == "categorical":
            raise ValueError(f"{self.name}: a categorical parameter needs values, e.g. values: sgd,adam")
        if self.min is None or self.max is None:
            raise ValueError(f"{self.name}: give min and max (or values)")
        if self.min > self.max:
            raise ValueError(f"{self.name}: min {self.min:g} is larger than max {self.max:g}")
        if self.type == "int" and (self.min != int(self.min) or self.max != int(self.max)):
            raise ValueError(f"{self.name}: an int parameter needs whole min and max")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"{self.name}: step {self.step:g} must be greater than 0")
            if self.max > self.min and self.step > self.max - self.min:
                raise ValueError(f"{self.name}: step {self.step:g} is larger than the range {self.min:g}..{self.max:g}")
            if self.type == "int" and self.step != int(self.step):
                raise ValueError(f"{self.name}: an int parameter needs a whole step")
        return self


class MetricSpec(BaseModel):
    """A metric collected from the trial's output."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Metric name, e.g. accuracy.")
    regex: str | None = Field(
        default=None,
        description="Regex over each output line: a group named 'value', or one group (the value), or "
        "Katib's two groups (name, value). Default: Katib's name=value format.",
    )

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            _regex(value, 1, f"regex {value!r} has no group for the value; e.g. 'accuracy: ([0-9.]+)'")
        return value


class ObjectiveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, description="The metric to optimize (one of metrics, or any name in Katib format).")
    direction: Literal["minimize", "maximize"] = Field(description="minimize or maximize.")
    goal: float | None = Field(default=None, description="Stop the tuning (GoalReached) once a trial reaches this value.")


class EarlyStoppingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["median"] = Field(default="median", description="median: Katib's median stopping rule.")
    min_trials_required: int = Field(default=3, ge=1, description="Succeeded trials needed before any trial is stopped.")
    start_step: int = Field(default=4, ge=1, description="Reports of the objective a trial makes before it can be stopped.")


class TuningSpec(BaseModel):
    """Hyperparameter tuning: trials of one training with suggested hyperparameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Tuning name: lowercase letters, digits and '-', at most 50.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str | None = Field(default=None, description="MLflow experiment (default: the training's).")
    training: TrainingSpec | None = Field(default=None, description="The training each trial runs (or use template).")
    template: str | None = Field(default=None, description="A training template each trial runs (or use training).")
    strategy: Literal["grid", "random", "bayesian"] = Field(
        description="grid (every step of every range), random, or bayesian (Optuna's TPE, a model-based sampler).")
    seed: int | None = Field(default=None, description="Random seed: the same seed gives the same suggestions.")
    parameters: list[HyperparameterSpec] = Field(description="The search space; fixed hyperparameters stay in the training.")
    metrics: list[MetricSpec] = Field(default_factory=list, description="Metrics collected from each trial's output.")
    objective: ObjectiveSpec = Field(description="The metric to optimize, its direction and an optional goal.")
    max_trials: int = Field(default=12, ge=1, le=10_000, description="Trials to run at most.")
    max_failed_trials: int = Field(default=3, ge=1, description="The tuning fails once this many trials failed.")
    parallel_trials: int = Field(default=1, ge=1, le=64, description="Trials running at the same time.")
    early_stopping: EarlyStoppingSpec | None = Field(default=None, description="Median early stopping (off when absent).")
    trial_deployment: str | None = Field(
        default=None, pattern=r"^[\w.-]+/[\w.-]+$",
        description="Run each trial as its own flow run of this training deployment (train/gpu: a pod per "
        "trial, so parallel trials are parallel pods). Default: trials are processes of the tuning's run.")

    @model_validator(mode="after")
    def _check(self) -> "TuningSpec":
        if (self.training is None) == (self.template is None):
            raise ValueError("give exactly one of training (an inline training spec) or template (a template name)")
        if not self.parameters:
            raise ValueError("parameters is empty: give at least one hyperparameter to search")
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"parameters: a name appears twice in {names}")
        if self.strategy == "grid":
            for p in self.parameters:
                if p.values is None and p.step is None:
                    raise ValueError(f"parameters.{p.name}: grid needs a step for a {p.type} range (or give values)")
        if self.trial_deployment:
            for m in self.metrics:
                if m.regex is not None and re.compile(m.regex).groups < 2:
                    raise ValueError(f"metrics.{m.name}.regex: with trial_deployment the training collects metrics "
                                     "by name, so the regex needs Katib's two groups (name, value)")
        if self.metrics and self.objective.metric not in [m.name for m in self.metrics]:
            raise ValueError(f"objective.metric {self.objective.metric!r} is not one of metrics "
                             f"({', '.join(m.name for m in self.metrics)})")
        return self

    def resolved(self, base: Path) -> "TuningSpec":
        """A copy whose inline training has its relative local paths made absolute against `base`."""
        if self.training is None:
            return self
        return self.model_copy(update={"training": self.training.resolved(base)})

    def metric_regexes(self) -> dict[str, str | None]:
        """Metric name -> its regex (None: Katib format); the objective is always collected."""
        out = {m.name: m.regex for m in self.metrics}
        out.setdefault(self.objective.metric, None)
        return out


# -- batch inference and model evaluation ----------------------------------------------------------

MAX_EVALUATION_BYTES = 20 * 1024**3  # the seeds' limit on a model evaluation's input
MAX_CLASSES = 50
_MODEL_REF = re.compile(r"^[A-Za-z0-9][\w.-]*(@[\w-]+|/\d+)$")


def is_mlflow_uri(model: str) -> bool:
    """models:/name/version, models:/name@alias or runs:/run_id/path."""
    return re.match(r"^(models|runs):/", model) is not None


def is_registry_ref(model: str) -> bool:
    """`name@alias` or `name/version` (a path must then be written ./dir or file://...)."""
    return "://" not in model and bool(_MODEL_REF.match(model))


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


class EvaluationSpec(_BatchSettings):
    """Model evaluation: a batch inference over labelled data, then metrics, curves and a report in MLflow."""

    FORM_FIRST: ClassVar[tuple[str, ...]] = ("name", "description", "experiment", "task", "model", "input_uri",
                                             "input_format", "label_field", "class_names", "output_uri", "id_field")

    name: str = Field(pattern=NAME_PATTERN, description="Evaluation name: lowercase letters, digits and '-', at most 50.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str = Field(default="evaluations", min_length=1, max_length=100,
                            description="MLflow experiment of the evaluation run.")
    task: Literal["classification", "regression"] = Field(description="classification or regression.")
    input_uri: str = Field(description="Labelled data (at most 20 GB): a .csv or .jsonl file, or a directory of them. "
                                       + RELATIVE_PATHS)
    input_format: Literal["jsonl", "csv"] = Field(description="jsonl or csv (files must end in .jsonl or .csv).")
    label_field: str = Field(min_length=1, description="The field that holds the ground truth.")
    class_names: list[str] | None = Field(
        default=None, description=f"Classification: the model's classes in its output order, at most {MAX_CLASSES} "
        "(default: the model's classes_, else the labels seen).")

    @model_validator(mode="after")
    def _check(self) -> "EvaluationSpec":
        if self.class_names is not None:
            if self.task != "classification":
                raise ValueError("class_names is only for task: classification")
            if len(self.class_names) > MAX_CLASSES:
                raise ValueError(f"class_names: {len(self.class_names)} classes; a classification evaluation "
                                 f"takes at most {MAX_CLASSES}")
            if len(self.class_names) < 2:
                raise ValueError("class_names: give at least 2 classes")
            if len(set(self.class_names)) != len(self.class_names):
                raise ValueError("class_names: a class appears twice")
        if self.feature_fields and self.label_field in self.feature_fields:
            raise ValueError(f"feature_fields contains the label field {self.label_field!r}: the model must not see it")
        return self

    def batch_spec(self, name: str | None = None) -> BatchInferenceSpec:
        """The batch inference this evaluation runs (the label is never fed to the model)."""
        shared = self.model_dump(include=set(_BatchSettings.model_fields))
        shared["drop_fields"] = [*self.drop_fields, self.label_field]
        return BatchInferenceSpec(
            **shared, name=name or self.name, description=f"batch inference of evaluation {self.name}",
            experiment=self.experiment, input_uri=self.input_uri, input_format=self.input_format,
            include=[f"**/*.{self.input_format}"], output_probabilities=self.task == "classification")
