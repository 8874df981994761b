"""EvaluationSpec: a model evaluation (a batch inference over labelled rows, then metrics and plots)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from mlyard.core.specs.batch import BatchInferenceSpec, BatchSettings
from mlyard.core.specs.common import NAME_PATTERN
from mlyard.core.uris import RELATIVE_PATHS

MAX_EVALUATION_BYTES = 20 * 1024**3  # the seeds' limit on a model evaluation's input
MAX_CLASSES = 50


class EvaluationSpec(BatchSettings):
    """Model evaluation: a batch inference over labelled data, then metrics, curves and a report in MLflow."""

    FORM_FIRST: ClassVar[tuple[str, ...]] = ("name", "description", "experiment", "task", "model", "input_uri",
                                             "input_format", "label_field", "class_names", "output_uri", "id_field")

    name: str = Field(pattern=NAME_PATTERN, description="Evaluation name: lowercase letters, digits and '-', at most 50; e.g. digits-holdout.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str = Field(default="evaluations", min_length=1, max_length=100,
                            description="MLflow experiment of the evaluation run.")
    task: Literal["classification", "regression"] = Field(description="classification or regression.")
    input_uri: str = Field(description="Labelled data (at most 20 GB): a .csv or .jsonl file, or a directory of them. "
                                       + RELATIVE_PATHS)
    input_format: Literal["jsonl", "csv"] = Field(description="jsonl or csv (files must end in .jsonl or .csv).")
    label_field: str = Field(min_length=1, description="The field that holds the ground truth, e.g. label.")
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
        shared = self.model_dump(include=set(BatchSettings.model_fields))
        shared["drop_fields"] = [*self.drop_fields, self.label_field]
        return BatchInferenceSpec(
            **shared, name=name or self.name, description=f"batch inference of evaluation {self.name}",
            experiment=self.experiment, input_uri=self.input_uri, input_format=self.input_format,
            include=[f"**/*.{self.input_format}"], output_probabilities=self.task == "classification")
