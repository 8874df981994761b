"""Contracts of the code base itself."""

import json
import subprocess
import sys

import pytest

PURE = ["mlyard.settings", "mlyard.errors", "mlyard.specs", "mlyard.uris", "mlyard.trainings", "mlyard.runs", "tasks.launch", "tasks.evaluation",
        "tasks.metrics", "registry", "tuning", "schedules", "serving"]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_not_import_prefect(module):
    code = f"import sys, {module}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"{module} imports Prefect"


@pytest.mark.parametrize("flow_path, models", [
    ("flows.training:train", ("TrainingSpec", "Resources")),
    ("flows.tuning:tune", ("TuningSpec", "HyperparameterSpec", "MetricSpec", "ObjectiveSpec", "EarlyStoppingSpec",
                           "TrainingSpec")),
    ("flows.batch_inference:batch_infer", ("BatchInferenceSpec", "Resources")),
    ("flows.batch_worker:batch_worker", ("WorkerSpec", "ShardSpec")),
    ("flows.evaluation:evaluate", ("EvaluationSpec", "Resources")),
])
def test_flow_parameter_schema_documents_every_field(flow_path, models):
    import importlib

    module, name = flow_path.split(":")
    schema = getattr(importlib.import_module(module), name).parameters.model_dump()
    defs = schema["definitions"]
    assert schema["required"] == ["spec"]
    for model in models:
        for field, prop in defs[model]["properties"].items():
            assert prop.get("description"), f"{model}.{field} has no description"
            assert prop != {} and "type" in prop or "anyOf" in prop or "$ref" in prop or "allOf" in prop, \
                f"{model}.{field} would render as Any"
