"""TuningSpec: a hyperparameter tuning (Katib's semantics): the search space, objective, early stopping."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlyard.core.names import current_deployment
from mlyard.core.specs.common import NAME_PATTERN, SpecModel, compiled_regex
from mlyard.core.specs.training import TrainingSpec


class HyperparameterSpec(SpecModel):
    """One hyperparameter to search: a range (min/max, step for grid) or a list of values."""

    model_config = ConfigDict(extra="forbid")
    FORM_LISTS: ClassVar[tuple[str, ...]] = ("values",)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", description="Passed to the script as --name value, e.g. lr.")
    type: Literal["int", "double", "categorical"] = Field(description="int, double or categorical (values only).")
    min: float | None = Field(default=None, description="Smallest value (int and double), e.g. 0.001.")
    max: float | None = Field(default=None, description="Largest value (int and double), e.g. 0.1.")
    step: float | None = Field(default=None, description="Grid step (int and double), e.g. 0.01; grid needs it.")
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


class MetricSpec(SpecModel):
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
    def _regex_has_a_group(cls, value: str | None) -> str | None:
        if value is not None:
            compiled_regex(value, 1, f"regex {value!r} has no group for the value; e.g. 'accuracy: ([0-9.]+)'")
        return value


class ObjectiveSpec(SpecModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, description="The metric to optimize (one of metrics, or any name in Katib format), e.g. accuracy.")
    direction: Literal["minimize", "maximize"] = Field(description="minimize or maximize.")
    goal: float | None = Field(default=None, description="Stop the tuning (GoalReached) once a trial reaches this value, e.g. 0.95.")


class EarlyStoppingSpec(SpecModel):
    model_config = ConfigDict(extra="forbid", title="Median stopping")  # the Run form's choice: Median stopping | Off

    algorithm: Literal["median"] = Field(default="median", description="median: Katib's median stopping rule.")
    min_trials_required: int = Field(default=3, ge=1, description="Succeeded trials needed before any trial is stopped.")
    start_step: int = Field(default=4, ge=1, description="Reports of the objective a trial makes before it can be stopped.")


class TuningSpec(SpecModel):
    """Hyperparameter tuning: trials of one training with suggested hyperparameters."""

    model_config = ConfigDict(extra="forbid")
    FORM_NONE: ClassVar[dict[str, str]] = {"training": "Use template", "early_stopping": "Off"}

    name: str = Field(pattern=NAME_PATTERN, description="Tuning name: lowercase letters, digits and '-', at most 50; e.g. digits-search.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str | None = Field(default=None, description="MLflow experiment, e.g. digits-tuning (default: the training's).")
    training: TrainingSpec | None = Field(default=None, description="The training each trial runs (or use template).")
    template: str | None = Field(default=None, description="A training template each trial runs (or use training), e.g. digits-sgd (`mlyard templates list`).")
    strategy: Literal["grid", "random", "bayesian"] = Field(
        description="grid (every step of every range), random, or bayesian (Optuna's TPE, a model-based sampler).")
    seed: int | None = Field(default=None, description="Random seed, e.g. 42: the same seed gives the same suggestions (default: a new one each time).")
    parameters: list[HyperparameterSpec] = Field(description="The search space, e.g. lr (double, 0.001 to 0.1) and optimizer (categorical: sgd, adam); fixed hyperparameters stay in the training.")
    metrics: list[MetricSpec] = Field(default_factory=list, description="Metrics collected from each trial's output, e.g. accuracy (default: the objective's metric, in Katib format).")
    metrics_format: Literal["text", "json"] = Field(
        default="text",
        description="text: Katib's name=value lines (or each metric's regex). json: Katib's JSON lines, one "
        "object per line ({\"accuracy\": \"0.91\", \"timestamp\": 1700000000.5}); `timestamp` is the "
        "metrics' time and a line starting with '{' that cannot be read fails the trial.")
    objective: ObjectiveSpec = Field(description="The metric to optimize, its direction and an optional goal.")
    max_trials: int = Field(default=12, ge=1, le=10_000, description="Trials to run at most.")
    max_failed_trials: int = Field(default=3, ge=1, description="The tuning fails once this many trials failed.")
    parallel_trials: int = Field(default=1, ge=1, le=64, description="Trials running at the same time.")
    early_stopping: EarlyStoppingSpec | None = Field(default=None, description="Median early stopping (off when absent).")
    trial_deployment: str | None = Field(
        default=None, pattern=r"^[\w.-]+/[\w.-]+$",
        description="Run each trial as its own flow run of this training deployment (train/train-gpu: a pod per "
        "trial, so parallel trials are parallel pods). Default: trials are processes of the tuning's run.")

    @field_validator("trial_deployment")
    @classmethod
    def _trial_deployment_named_now(cls, value: str | None) -> str | None:
        return value if value is None else current_deployment(value)  # `train/local` as named before: train-local

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
        if self.metrics_format == "json":
            for m in self.metrics:
                if m.regex is not None:
                    raise ValueError(f"metrics.{m.name}.regex: with metrics_format json a metric is read by its key; "
                                     "drop the regex")
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

