"""Contracts of the code base itself."""

import json
import subprocess
import sys

import pytest

PURE = ["mlyard.settings", "mlyard.errors", "mlyard.specs", "mlyard.uris", "mlyard.connection", "mlyard.api", "mlyard.cli",
        "mlyard.queries",
        "tasks.checks", "mlyard.trainings", "mlyard.runs", "tasks.launch", "tasks.evaluation", "tasks.metrics",
        # a batch worker process starts without Prefect:
        "tasks.inference", "tasks.transport", "tuning.loop", "registry", "tuning", "schedules", "serving"]


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
    ("flows.batch_worker:batch_worker", ("BatchJob", "BatchShard")),
    ("flows.evaluation:evaluate", ("EvaluationSpec", "Resources")),
    ("flows.endpoint:deploy_endpoint", ("EndpointSpec", "StageSpec", "StageResourceSpec", "NodeAutoscaler",
                                        "PodAutoscaler")),
    ("flows.endpoint:add_stage", ("StageChangeSpec", "StageSpec")),
    ("flows.endpoint:promote_stage", ("PromotionSpec",)),
    ("flows.endpoint:delete_endpoint", ("DeletionSpec",)),
    ("flows.endpoint:sync_endpoint", ("SyncSpec",)),
    ("flows.pipeline_run:pipeline_run", ("PipelineRunSpec",)),
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


# -- imports run one way (DESIGN §2) ---------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
VOCABULARY = {"mlyard.settings", "mlyard.errors", "mlyard.specs", "mlyard.uris", "mlyard.connection", "mlyard.names"}
# What each layer may import of ours, bottom up; the front door (the rest of mlyard/) may import anything.
MAY_IMPORT = {
    "vocabulary": set(),
    "tuning": set(),
    "schedules": set(),
    "serving": {"registry", "tasks"},
    "registry": set(),
    "tasks": {"registry", "tuning", "schedules"},
    "flows": {"tasks", "registry", "tuning", "schedules", "serving"},
}


def _layer(module: str) -> str:
    if module in VOCABULARY:
        return "vocabulary"
    top = module.split(".")[0]
    return "front door" if top == "mlyard" else top


def _imports(path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_imports_run_one_way():
    ours = set(MAY_IMPORT) - {"vocabulary"} | {"mlyard"}
    wrong = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in ours or "migrations" in rel.parts:
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        layer = _layer(module)
        if layer == "front door":
            continue
        for imported in _imports(path):
            if imported.split(".")[0] not in ours or imported == "mlyard":
                continue
            if imported in VOCABULARY or ".".join(imported.split(".")[:2]) in VOCABULARY:
                continue
            target = _layer(imported)
            if target != layer and target not in MAY_IMPORT[layer]:
                wrong.append(f"{module} ({layer}) imports {imported} ({target})")
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)
