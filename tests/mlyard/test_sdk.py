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
             "whoami", "projects", "compare_models"}


def test_dir_names_every_lifecycle_call_and_each_is_documented():
    import mlyard

    assert LIFECYCLE <= set(dir(mlyard)) and LIFECYCLE <= set(mlyard.__all__)
    for name in mlyard.__all__:
        assert (getattr(mlyard, name).__doc__ or "").strip(), f"mlyard.{name} has no docstring"
    for cls, methods in ((mlyard.Run, {"wait", "status", "metrics", "logs", "urls", "stop", "register"}),
                         (mlyard.Model, {"deploy", "alias", "show", "urls", "metrics"}),
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


def test_a_run_attached_by_its_id_waits_shows_its_metrics_and_logs_and_says_why_it_failed(stack):
    """From a fresh interpreter as a user calls it: a training queued (wait=False), then attached by its id in
    the same way a second process would (mlyard.run(ID)); wait() raises RunFailed with the exit code, and the
    Run still shows its status, the metric the script printed and its log lines."""
    from tests.test_user_paths import _ok, project, python

    work = project("sdk-fails")
    (work / "algo").mkdir()
    (work / "algo" / "main.py").write_text("import sys\nprint('epoch=1 loss=2.5', flush=True)\nsys.exit(3)\n")
    out = _ok(python("""
        import mlyard
        from mlyard.core.errors import RunFailed

        queued = mlyard.train({"name": "sdk-fails", "source_uri": "algo", "entry_point": "main.py"}, wait=False)
        again = mlyard.run(queued.id)
        try:
            again.wait(timeout=240)
        except RunFailed as exc:
            print("RAISED", exc)
        print("STATUS", again.status, again.metrics.get("loss"))
        print("LOGGED", any("loss=2.5" in line for line in again.logs(tail=200)))
    """, cwd=work))
    assert "RAISED" in out and "exit code 3" in out, out
    assert "STATUS FAIL TRAIN 2.5" in out and "LOGGED True" in out, out
