"""The Python SDK's surface (mlyard/__init__.py, mlyard/sdk.py) as a data scientist discovers it: dir(),
help() and an editor's completion name every lifecycle call, each documented; `import mlyard` stays
instant. The calls themselves run against a stack in tests/test_docs_code.py (the tutorial) and
tests/test_user_paths.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LIFECYCLE = {"train", "tune", "batch_infer", "evaluate", "run", "register_model", "model", "list_models", "deploy",
             "endpoint", "list_endpoints", "Run", "Model", "Endpoint", "rags", "notebooks", "pipelines", "schedule",
             "whoami", "projects"}


def test_dir_names_every_lifecycle_call_and_each_is_documented():
    import mlyard

    assert LIFECYCLE <= set(dir(mlyard)) and LIFECYCLE <= set(mlyard.__all__)
    for name in mlyard.__all__:
        assert (getattr(mlyard, name).__doc__ or "").strip(), f"mlyard.{name} has no docstring"
    for cls, methods in ((mlyard.Run, {"wait", "status", "metrics", "logs", "urls", "stop", "register"}),
                         (mlyard.Model, {"deploy", "alias", "show", "urls"}),
                         (mlyard.Endpoint, {"call", "issue_token", "tokens", "add_stage", "canary", "promote",
                                            "rollout", "rollback", "stats", "show", "delete"})):
        assert methods <= set(dir(cls)), cls
        assert all((getattr(cls, m).__doc__ or "").strip() for m in methods if not isinstance(getattr(cls, m), property)
                   or getattr(cls, m).fget.__doc__), cls


def test_import_mlyard_loads_no_engine():
    code = "import sys, json, mlyard; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & " \
           "{'prefect', 'mlflow', 'sqlalchemy', 'pydantic'})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_a_run_of_an_unknown_kind_is_refused_naming_the_kinds():
    import mlyard
    from mlyard.core.errors import SpecError

    with pytest.raises(SpecError, match="training, tuning, batch, evaluation"):
        mlyard.run("0000", kind="trainings")
