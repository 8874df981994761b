"""The CLI's reads (mlyard/queries.py) as the warm mlyard API of the running stack answers them: the
same answers and the same errors as computing them in the caller's process, and a fallback to that
when the API is gone."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from mlyard import queries
from mlyard.errors import ModelNotFound, SpecError, TrainingNotFound


def _local(name, **kwargs):
    return json.loads(json.dumps(queries.QUERIES[name](**kwargs), default=str))


@pytest.fixture()
def only_remote(monkeypatch):
    """Make computing a query in this process fail: an answer can then only come from the API."""
    def refuse(**_):
        raise AssertionError("computed in the test process, not by the mlyard API")

    monkeypatch.setattr(queries, "QUERIES", {name: refuse for name in queries.QUERIES})


def test_the_stack_runs_a_warm_api_that_answers_reads(stack, platform):
    assert queries.api_url() == stack.service_url
    with urllib.request.urlopen(f"{stack.service_url}/health", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    for name in ("models_list", "templates_list"):
        assert queries._remote(stack.service_url, name, {}) == _local(name)
    # an experiment's count of running work may move between the two reads: the same experiments
    assert [e["name"] for e in queries._remote(stack.service_url, "experiments_list", {})] == \
        [e["name"] for e in _local("experiments_list")]
    # runs may still be running (their seconds and status move): the same runs, in the same order
    for name, kwargs in (("trainings_list", {"limit": 5}), ("runs_list", {"kind": "BATCH", "limit": 5})):
        remote = queries._remote(stack.service_url, name, kwargs)
        assert [r["id"] for r in remote] == [r["id"] for r in _local(name, **kwargs)]
        assert all(r["status"] and r["spec"] for r in remote)


def test_errors_cross_the_api_as_the_same_class_and_message(stack, platform, only_remote):
    with pytest.raises(ModelNotFound) as missing:
        queries.ask("models_show", ref="no-such-model@champion")
    assert "no-such-model" in str(missing.value) and "mlyard models list" in str(missing.value)
    with pytest.raises(TrainingNotFound, match="mlyard trainings list"):
        queries.ask("trainings_show", training_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(SpecError, match="model: 'no-such-model@champion' is not valid"):
        queries.ask("model_reference", model="no-such-model@champion")
    with pytest.raises(SpecError, match="query: 'no_such_query' is not valid: one of"):
        queries.ask("no_such_query")
    with pytest.raises(SpecError, match="query runs_list"):
        queries.ask("runs_list", kind="BATCH", colour="blue")


def test_without_the_api_the_answer_is_computed_here(stack, platform, monkeypatch):
    with socket.socket() as s:  # a port nobody answers on: the API went away since `up`
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(queries, "api_url", lambda: closed)
    assert queries.ask("experiments_list") == _local("experiments_list")


def test_a_list_or_show_command_imports_neither_prefect_nor_mlflow(stack, platform):
    """What makes `mlyard trainings list` answer in about half a second: the command only asks the API."""
    import subprocess
    import sys

    code = """
import json, sys
from typer.testing import CliRunner
from mlyard.cli import app
for argv in (["trainings", "list", "--json"], ["models", "list", "--json"], ["models", "show", "nosuch"]):
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == (2 if argv[-1] == "nosuch" else 0), (argv, result.output)
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {"prefect", "mlflow", "sqlalchemy", "sklearn"})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
