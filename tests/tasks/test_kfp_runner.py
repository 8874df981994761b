"""tasks/kfp_runner.py: the states and outputs of a pipeline run come from what kfp.local returned and
did, not from log lines that may never come. Real kfp.local runs (subprocess runner), no worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PIPELINES = '''
import sys
from kfp import compiler, dsl

@dsl.component(base_image="python:3.11")
def add(a: int, b: int) -> int:
    return a + b

@dsl.pipeline(name="add")  # named like its one component: kfp.local runs it as that component
def same_name(a: int = 1, b: int = 2) -> int:
    return add(a=a, b=b).output

@dsl.component(base_image="python:3.11")
def flaky(marker: str) -> str:
    import os
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("the first attempt fails")
    return "second attempt"

@dsl.pipeline(name="retried")
def retried(marker: str) -> str:
    return flaky(marker=marker).set_retry(num_retries=1, backoff_duration="0s").output

@dsl.component(base_image="python:3.11")
def reads(path: str) -> str:
    return open(path).read()

@dsl.pipeline(name="missing")
def missing(path: str = "/nonexistent/input.csv") -> str:
    return reads(path=path).output

for fn, name in ((same_name, "same"), (retried, "retried"), (missing, "missing")):
    compiler.Compiler().compile(fn, sys.argv[1] + f"/{name}.yaml")
'''


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipelines")
    script = folder / "make.py"
    script.write_text(PIPELINES)
    subprocess.run([sys.executable, str(script), str(folder)], check=True, capture_output=True)
    return folder


def _run(compiled: Path, name: str, arguments: dict, tmp_path: Path) -> tuple[int, str, dict, dict]:
    from mlyard.tasks import kfp

    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "pipeline.yaml").write_text(kfp.for_local(kfp.load((compiled / f"{name}.yaml").read_text())))
    (run_dir / "arguments.json").write_text(json.dumps(arguments))
    proc = subprocess.run([sys.executable, "-m", "mlyard.tasks.kfp_runner", str(run_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    return (proc.returncode, proc.stdout + proc.stderr, json.loads((run_dir / "result.json").read_text()),
            json.loads((run_dir / "nodes.json").read_text()))


def test_a_one_step_pipeline_named_like_its_component_succeeds_with_its_output(compiled, tmp_path):
    import glob

    before = set(glob.glob("/tmp/kfp-workspace-*"))
    code, out, result, nodes = _run(compiled, "same", {"a": 1, "b": 2}, tmp_path)
    assert code == 0, out
    assert result == {"status": "SUCCEEDED", "reason": None, "outputs": {"Output": 3}}
    assert nodes["add"]["state"] == "SUCCEEDED"
    # kfp.local's workspace is the run's own folder, removed with it: none is left in /tmp
    assert (tmp_path / "same" / "workspace").is_dir() and set(glob.glob("/tmp/kfp-workspace-*")) <= before


def test_a_step_that_succeeded_on_its_retry_is_succeeded(compiled, tmp_path):
    code, out, result, nodes = _run(compiled, "retried", {"marker": str(tmp_path / "marker")}, tmp_path)
    assert code == 0, out
    assert result["status"] == "SUCCEEDED" and result["outputs"] == {"Output": "second attempt"}
    assert nodes["flaky"] == {"state": "SUCCEEDED", "runs": 2, "failed": 1}


def test_a_step_failing_on_a_missing_input_says_why(compiled, tmp_path):
    code, out, result, nodes = _run(compiled, "missing", {"path": str(tmp_path / "nope.csv")}, tmp_path)
    assert code == 1 and result["status"] == "FAILED" and result["outputs"] == {}
    assert nodes["reads"]["state"] == "FAILED" and "reads" in result["reason"]
    assert "FileNotFoundError" in result["reason"] and "nope.csv" in result["reason"], result


def test_settled_states_never_stay_running():
    from mlyard.tasks.kfp_runner import Nodes

    nodes = Nodes(Path("/dev/null"))
    nodes._write = lambda: None  # type: ignore[method-assign]
    nodes.nodes = {"loop-step": {"state": "RUNNING", "runs": 3, "failed": 0},
                   "retried": {"state": "FAILED", "runs": 2, "failed": 1}, "ignored": {"state": "FAILED", "runs": 1, "failed": 1}}
    nodes.succeeded = {"loop-step": 2, "retried": 1}
    nodes.settle(True)
    assert {n: s["state"] for n, s in nodes.nodes.items()} == {"loop-step": "SUCCEEDED", "retried": "SUCCEEDED",
                                                              "ignored": "FAILED"}
    nodes.nodes["loop-step"]["state"] = "RUNNING"
    nodes.settle(False)
    assert nodes.nodes["loop-step"]["state"] == "NOT FINISHED"
