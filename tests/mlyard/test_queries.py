"""The CLI's reads (mlyard/queries.py) as the warm mlyard API of the running stack answers them: the
same answers and the same errors as computing them in the caller's process, and a fallback to that
when the API is gone."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from mlyard import queries, warm_api
from mlyard.core.errors import ModelNotFound, SpecError, TrainingNotFound


def _local(name, **kwargs):
    return json.loads(json.dumps(queries.QUERIES[name](**kwargs), default=str))


@pytest.fixture()
def only_remote(monkeypatch):
    """Make computing a query in this process fail: an answer can then only come from the API."""
    def refuse(**_):
        raise AssertionError("computed in the test process, not by the mlyard API")

    monkeypatch.setattr(queries, "QUERIES", {name: refuse for name in queries.QUERIES})


def test_the_stack_runs_a_warm_api_that_answers_reads(stack, platform):
    assert warm_api.api_url() == stack.service_url
    with urllib.request.urlopen(f"{stack.service_url}/health", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    for name in ("models_list", "templates_list"):
        assert warm_api._remote(stack.service_url, name, {}) == _local(name)
    # an experiment's count of running work may move between the two reads: the same experiments
    assert [e["name"] for e in warm_api._remote(stack.service_url, "experiments_list", {})] == \
        [e["name"] for e in _local("experiments_list")]
    # runs may still be running (their seconds and status move): the same runs, in the same order
    for name, kwargs in (("trainings_list", {"limit": 5}), ("runs_list", {"kind": "BATCH", "limit": 5})):
        remote = warm_api._remote(stack.service_url, name, kwargs)
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
    monkeypatch.setattr(warm_api, "api_url", lambda settings=None: closed)
    assert queries.ask("experiments_list") == _local("experiments_list")


def test_a_list_or_show_command_imports_neither_prefect_nor_mlflow(stack, platform):
    """What makes `mlyard trainings list` (and every other list and show) answer in about half a second:
    the command only asks the API."""
    import subprocess
    import sys

    code = """
import json, sys
from typer.testing import CliRunner
from mlyard.cli import app
for argv in (["trainings", "list", "--json"], ["models", "list", "--json"], ["models", "show", "nosuch"],
             ["pipeline-runs", "list", "--json"], ["pipeline-runs", "show", "nosuch"], ["pipelines", "list", "--json"],
             ["endpoints", "list", "--json"], ["endpoints", "show", "nosuch"], ["rags", "list", "--json"],
             ["rags", "show", "nosuch"], ["schedules", "list", "--json"], ["schedules", "show", "nosuch"]):
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == (2 if argv[-1] == "nosuch" else 0), (argv, result.output)
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {"prefect", "mlflow", "sqlalchemy", "sklearn"})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _cancel(flow_run_id: str) -> dict:
    """Read a queued run back from Prefect (cancelled at once: the run is only looked at)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(UUID(flow_run_id))
        client.set_flow_run_state(fr.id, Cancelled(message="looked at by a test"), force=True)
        deployment = client.read_deployment(fr.deployment_id)
    return {"deployment": f"{deployment.name}", "parameters": fr.parameters, "tags": fr.tags}


def test_a_command_queues_its_run_through_the_api_without_importing_prefect(stack, platform):
    """What takes 2-3 s off `mlyard rags sync` and every --submit: the warm API makes the flow run."""
    import subprocess
    import sys

    code = """
import json, sys
from mlyard.submit import submit
run = submit("rag-sync/rag-sync-local", {"spec": {"rag": "nosuch"}}, tags=["mlyard.test:queued"])
print(json.dumps([run, sorted({m.split('.')[0] for m in sys.modules} & {"prefect", "mlflow", "sqlalchemy"})]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    run, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == [] and run["name"]
    queued = _cancel(run["id"])  # the deployment's own tags join the run's, as Prefect adds them
    assert (queued["deployment"], queued["parameters"]) == ("rag-sync-local", {"spec": {"rag": "nosuch"}})
    assert "mlyard.test:queued" in queued["tags"]


def test_queueing_errs_as_the_same_class_and_message_and_falls_back_without_the_api(stack, platform, monkeypatch):
    from mlyard import submit
    from mlyard.core.errors import StackError

    def refuse(**_):
        raise AssertionError("made in the test process, not by the mlyard API")

    with monkeypatch.context() as m:
        m.setattr(submit, "create_run", refuse)
        with pytest.raises(StackError, match="no deployment 'no-such-flow/no-such-flow-local'") as remote:
            submit.submit("no-such-flow/local", {})
    with pytest.raises(StackError) as here:
        submit.create_run("no-such-flow/local", {}, [], {})
    assert str(remote.value) == str(here.value) and "mlyard up" in str(here.value)

    with socket.socket() as s:  # the API went away since `up`: the run is made here
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(warm_api, "api_url", lambda: closed)
    run = submit.submit("rag-sync/rag-sync-local", {"spec": {"rag": "nosuch"}}, tags=["mlyard.test:here"])
    assert "mlyard.test:here" in _cancel(run["id"])["tags"]
