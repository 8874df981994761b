"""TrainingSpec: one training (the EasyMaker training contract, DESIGN §5)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlyard.core.specs.common import (
    KATIB_METRIC_PATTERN,
    NAME_PATTERN,
    Resources,
    SpecModel,
    check_uri,
    compiled_regex,
    with_overrides,
)
from mlyard.core.uris import RELATIVE_PATHS, absolute

MAX_HYPERPARAMETERS = 100
MAX_DATASETS = 10


# the pod of a multi-node training's flow run: it makes and follows the nodes' Job, nothing heavier
COORDINATOR: dict[str, Any] = {"gpu_count": 0, "cpu_request": "250m", "cpu_limit": "1", "memory_request": "512Mi",
                               "memory_limit": "2Gi", "data_storage_size": "1Gi",
                               # the one flow run that may make Jobs: its nodes' (infra/k8s/base/flow-runs.yaml)
                               "service_account_name": "mlyard-flow-run",
                               # and may reach the API server (infra/k8s/base/network-policies.yaml runs-cluster-api)
                               "labels": {"mlyard.io/cluster-api": "allowed"}}
RUN_ACCOUNT = "mlyard-run"  # every other flow run's pod, and every node's: no rights


class TrainingSpec(SpecModel):
    """A training: run an algorithm's entry point with hyperparameters and datasets (EasyMaker contract)."""

    model_config = ConfigDict(extra="forbid", title="Training")  # a tuning's form: Training | Use template

    name: str = Field(pattern=NAME_PATTERN, description="Training name: lowercase letters, digits and '-', at most 50; e.g. digits-sgd.")
    description: str = Field(default="", max_length=255, description="Free text shown in lists.")
    experiment: str = Field(default="default", min_length=1, max_length=100,
                            description="MLflow experiment that groups this training (created if missing).")
    source_uri: str = Field(description="Directory of the algorithm, e.g. /home/me/algo or s3://bucket/algo: a path, "
                                        "file://, s3://, obs:// or nas://. "
                                        + RELATIVE_PATHS)
    entry_point: str = Field(description="Script inside source_uri that starts the training, e.g. train.py.")
    hyperparameters: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description=f"At most {MAX_HYPERPARAMETERS}; passed as --key value, EM_HP_{{KEY}} and EM_HPS (JSON).",
    )
    datasets: dict[str, str] = Field(
        default_factory=dict,
        description=f"At most {MAX_DATASETS}; name -> URI, staged in and passed as EM_DATASET_{{NAME}}.",
    )
    checkpoint_input_uri: str | None = Field(default=None, description="Checkpoint to resume from (EM_CHECKPOINT_INPUT_DIR), e.g. s3://bucket/ckpt/run1.")
    output_uri: str | None = Field(default=None, description="Where the model directory is copied when the training completes, e.g. s3://bucket/models/digits.")
    checkpoint_output_uri: str | None = Field(default=None, description="Where EM_CHECKPOINT_DIR is copied at the end, e.g. s3://bucket/ckpt/run2.")
    image: str | None = Field(default=None, description="Container image on the Kubernetes pool, e.g. a registered image's name; ignored locally.")
    resources: Resources = Field(default_factory=Resources, description="CPU, memory and GPUs on the Kubernetes pool.")
    nodes: int = Field(default=1, ge=1, le=32, description="Nodes of a distributed training. On the local pool, "
                       "that many node processes on this machine, meeting on 127.0.0.1 (torchrun's c10d rendezvous; "
                       "MASTER_ADDR, NODE_RANK and TF_CONFIG otherwise); on a Kubernetes pool an Indexed Job of that "
                       "many pods, each with `resources`, meeting at pod 0 through a headless Service.")
    max_restarts: int = Field(default=0, ge=0, le=10, description="A multi-node training on a Kubernetes pool: how "
                              "many times all its nodes start again when one fails, before the training fails with that "
                              "node's reason (JobSet's failurePolicy.maxRestarts, which Kubeflow Trainer uses). Every "
                              "start reports to the same MLflow run; a script that keeps checkpoints in shared storage "
                              "resumes from them. 0: the first failed node fails the training.")
    network: bool = Field(default=False, description="Let the entry point reach the network from its sandbox on this "
                          "machine (to download a dataset or weights). Off: it has only a loopback of its own. A pod's "
                          "network is its NetworkPolicy's.")
    torchrun: bool = Field(default=False, description="Start the entry point with torchrun (PyTorch).")
    processes_per_node: int = Field(default=1, ge=1, le=64, description="torchrun --nproc_per_node.")
    max_run_time_seconds: int | None = Field(default=None, ge=1, description="Fail the training after this long, e.g. 3600 (default: no limit).")
    collect_logs: bool = Field(default=True, description="Stream the script's output to the Prefect log and keep it in MLflow.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags, e.g. team = vision.")
    metric_patterns: list[str] = Field(
        default_factory=lambda: [KATIB_METRIC_PATTERN],
        description="Regexes matched against each output line; group 1 is the metric name, group 2 its value. "
        "Default: Katib's name=value, e.g. accuracy=0.91.",
    )

    metrics_format: Literal["text", "json"] = Field(
        default="text",
        description="text: metric_patterns over each output line. json: Katib's JSON lines, one object of "
        "metrics per line ({\"loss\": \"0.2\", \"timestamp\": 1700000000.5}); every numeric key is a metric, "
        "`timestamp` (epoch seconds or RFC 3339) its time, and a line starting with '{' that cannot be read "
        "fails the training.")

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
            check_uri(f"datasets.{name}", uri)
        return value

    @field_validator("source_uri", "checkpoint_input_uri", "output_uri", "checkpoint_output_uri")
    @classmethod
    def _uri(cls, value: str | None, info) -> str | None:
        if value is not None:
            check_uri(info.field_name, value)
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
            compiled_regex(pattern, 2, f"metric pattern {pattern!r} needs a name group and a value group")
        return value

    @model_validator(mode="after")
    def _torchrun(self) -> "TrainingSpec":
        if self.processes_per_node > 1 and not self.torchrun:
            raise ValueError("processes_per_node > 1 needs torchrun: true")
        if self.max_restarts and self.nodes == 1:
            raise ValueError(f"max_restarts {self.max_restarts} restarts the nodes of a multi-node training: "
                             "set nodes above 1, or max_restarts to 0")
        return self

    def resolved(self, base: Path) -> "TrainingSpec":
        """A copy whose relative local paths are absolute against `base` (the submitter's directory)."""
        updates: dict[str, Any] = {f: absolute(getattr(self, f), base) for f in
                                   ("source_uri", "checkpoint_input_uri", "output_uri", "checkpoint_output_uri")
                                   if getattr(self, f)}
        updates["datasets"] = {k: absolute(v, base) for k, v in self.datasets.items()}
        return self.model_copy(update=updates)

    def job_variables(self) -> dict[str, Any]:
        """Job variables of the Kubernetes pool's base job template (infra/gpu-job-template.json). A multi-node
        training's flow run only coordinates its nodes' Indexed Job: its own pod asks for no GPU and little
        else (COORDINATOR), the nodes get `resources` (`node_resources`)."""
        if self.nodes > 1:
            return {**COORDINATOR, **({"image": self.image} if self.image else {})}
        return self.node_resources()

    def node_resources(self) -> dict[str, Any]:
        """What each node's pod asks for, as job variables."""
        r = self.resources
        jv: dict[str, Any] = {"gpu_count": r.gpu_count}
        if r.gpu_type:
            jv["gpu_type"] = r.gpu_type
        if r.cpu:
            jv["cpu_request"] = jv["cpu_limit"] = f"{r.cpu:g}"
        if r.memory:
            jv["memory_request"] = jv["memory_limit"] = r.memory
        if r.data_storage:
            jv["data_storage_size"] = r.data_storage
        if self.image:
            jv["image"] = self.image
        return jv

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainingSpec":
        """A copy with `overrides` merged in (nested mappings such as hyperparameters are merged)."""
        return with_overrides(self, overrides)

