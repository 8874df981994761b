"""Typed specs, one module per action: the flow's parameter, the YAML a user passes, and the Python
argument (DESIGN §3). Pure pydantic; a bad spec fails here, before anything starts, naming the field
and what is allowed.

- `common`: names, URIs, model references, loading and merging YAML, resources
- `training`: TrainingSpec
- `tuning`: TuningSpec and its parts
- `batch`: BatchInferenceSpec (and the settings it shares with evaluation); BatchJob and BatchShard,
  the typed job a batch inference hands each worker
- `evaluation`: EvaluationSpec
- `cluster`: ClusterValues, what `mlyard k8s render|apply` installs (imported from its module)
"""

from mlyard.core.specs.batch import BatchInferenceSpec, BatchJob, BatchShard
from mlyard.core.specs.common import (
    KATIB_METRIC_PATTERN,
    NAME_PATTERN,
    Resources,
    is_mlflow_uri,
    is_registry_ref,
    load_spec,
    load_spec_file,
    merged,
    with_overrides,
)
from mlyard.core.specs.evaluation import MAX_CLASSES, MAX_EVALUATION_BYTES, EvaluationSpec
from mlyard.core.specs.training import MAX_DATASETS, MAX_HYPERPARAMETERS, TrainingSpec
from mlyard.core.specs.tuning import EarlyStoppingSpec, HyperparameterSpec, MetricSpec, ObjectiveSpec, TuningSpec

__all__ = [
    "BatchInferenceSpec", "BatchJob", "BatchShard", "EarlyStoppingSpec", "EvaluationSpec", "HyperparameterSpec", "KATIB_METRIC_PATTERN",
    "MAX_CLASSES", "MAX_DATASETS", "MAX_EVALUATION_BYTES", "MAX_HYPERPARAMETERS", "MetricSpec", "NAME_PATTERN",
    "ObjectiveSpec", "Resources", "TrainingSpec", "TuningSpec", "is_mlflow_uri", "is_registry_ref", "load_spec",
    "load_spec_file", "merged", "with_overrides",
]
