"""PipelineRunSpec: one run of an uploaded pipeline (the pipeline-run flow's parameter). Pure pydantic:
a bad spec fails here, naming the field; the run parameters are checked against the pipeline's own
inputs (tasks/kfp.py) before any run starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from mlyard.core.specs.common import NAME_PATTERN, SpecModel, check_uri
from mlyard.core.uris import absolute

# The console's statuses of a pipeline and of a pipeline run.
PIPELINE_STATUSES = ("CREATE REQUESTED", "CREATE IN PROGRESS", "CREATE FAILED", "ACTIVE")
PIPELINE_RUN_STATUSES = ("CREATE REQUESTED", "CREATE IN PROGRESS", "CREATE FAILED", "RUNNING", "COMPLETE IN PROGRESS",
                         "COMPLETE", "STOP IN PROGRESS", "STOPPED", "FAIL PIPELINE RUN IN PROGRESS", "FAIL PIPELINE RUN")


class PipelineRunSpec(SpecModel):
    """A run of an uploaded pipeline: its parameters and where it runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Run name: lowercase letters, digits and '-', 1-50.")
    description: str = Field(default="", max_length=255, description="What this run is for.")
    pipeline: str = Field(pattern=NAME_PATTERN, description="The uploaded pipeline to run (mlyard pipelines list).")
    experiment: str = Field(default="pipelines", max_length=255,
                            description="The experiment that groups related runs (shown in lists and as a tag).")
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="Values for the pipeline's inputs (those without one take "
                                                   "their defaults).")
    instance_type: str = Field(default="local", max_length=64,
                               description="Where the run's steps run: local (this machine, kfp.local) or a node "
                                           "type of the Kubeflow Pipelines server's cluster.")
    instance_count: int = Field(default=1, ge=1, le=10, description="How many instances the run may use.")
    boot_storage_gb: int = Field(default=50, ge=50, le=2048, description="Boot storage of each instance, in GB.")
    nas_uri: str | None = Field(default=None, description="A NAS share to mount for the run's steps "
                                                          "(nas://{id}:/{path}); steps find it in MLYARD_NAS_PATH.")
    scheduled_time: str | None = Field(default=None, description="The slot this run is for, when a schedule made it "
                                                                 "(ISO-8601, UTC); set by the scheduler.")

    @field_validator("nas_uri")
    @classmethod
    def _nas(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.startswith("nas://"):
                raise ValueError(f"a NAS URI nas://{{id}}:/{{path}}, not {v!r}")
            check_uri("nas_uri", v)
        return v

    def resolved(self, base: Path) -> "PipelineRunSpec":
        return self if self.nas_uri is None else self.model_copy(update={"nas_uri": absolute(self.nas_uri, base)})
