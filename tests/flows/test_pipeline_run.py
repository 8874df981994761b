"""Pipelines on the running platform, as users reach them: the CLI in a fresh process uploads, draws and
runs the example pipeline (kfp.local's subprocess runner, as a flow run of pipeline-run/pipeline-run-local on the
real worker), a failing run, a stopped run, and the rules."""

import json
import os
import time
from pathlib import Path

from test_user_paths import _ok, _one_line_error, mlyard

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "pipelines"


def _json(*args: str):
    return json.loads(_ok(mlyard(*args, "--json")))


def test_upload_graph_run_fail_download_and_rules(stack, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("components: {}\n")
    _one_line_error(mlyard("pipelines", "upload", str(bad), "--name", "bad"), "file", "pipelineInfo and root missing")
    _one_line_error(mlyard("pipelines", "upload", str(tmp_path / "nope.yaml")), "file", "exists")

    view = _json("pipelines", "upload", str(EXAMPLES / "example.yaml"), "--name", "example")
    assert view["status"] == "ACTIVE" and view["runs_here"] and {"epochs", "fail"} <= {i["name"] for i in view["inputs"]}
    g = _json("pipelines", "graph", "example")
    assert {"id": "exit-handler-1/for-loop-2/check", "parent": "exit-handler-1/for-loop-2"}.items() <= \
        next(n for n in g["nodes"] if n["name"] == "check").items()
    svg = tmp_path / "example.svg"
    assert "drawn to" in _ok(mlyard("pipelines", "graph", "example", "--out", str(svg))) and svg.stat().st_size > 1000

    _one_line_error(mlyard("pipeline-runs", "create", "--pipeline", "example", "--name", "r0", "--param", "speed=3"),
                    "parameters.speed", "an input of pipeline mlyard-example")
    _one_line_error(mlyard("pipeline-runs", "create", "--pipeline", "nope", "--name", "r0"), "pipeline", "not found")
    _json("pipelines", "upload", str(EXAMPLES / "container.yaml"), "--name", "container")
    _one_line_error(mlyard("pipeline-runs", "create", "--pipeline", "container", "--name", "r0"),
                    "container runtime", "alpine")

    # the run and its failing copy go at once (the local pool runs both): the copy is waited for, the run
    # followed
    run = _json("pipeline-runs", "create", "--pipeline", "example", "--name", "r1", "--param", "epochs=1",
                "--param", "rows=40")
    failed = mlyard("pipeline-runs", "copy", run["id"], "--set", "name=r2", "--set", "parameters.fail=true", "--wait")
    assert failed.returncode == 1 and "FAIL PIPELINE RUN" in failed.stderr and "explode" in failed.stderr
    from mlyard.pipelines import show_run  # the wait polls in this process: a CLI process a second takes a core

    deadline = time.monotonic() + 240
    while show_run(run["id"])["status"] not in ("COMPLETE", "FAIL PIPELINE RUN", "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.5)
    run = _json("pipeline-runs", "show", run["id"])
    assert run["status"] == "COMPLETE", run
    assert run["nodes"]["check"] == {"state": "SUCCEEDED", "runs": 2, "failed": 0}
    assert "explode" not in run["nodes"], "a condition that was false: its step never ran"
    assert {("fit", "model"), ("make-data", "data"), ("publish", "card")} <= {(o["task"], o["name"]) for o in run["outputs"]}
    got = _json("pipeline-runs", "download", run["id"], str(tmp_path / "out"), "--task", "fit")
    assert json.loads((tmp_path / "out" / "fit" / "model").read_text()).keys() == {"a", "b"} and len(got["copied"]) == 1
    rg = _json("pipeline-runs", "graph", run["id"])
    assert next(n for n in rg["nodes"] if n["name"] == "explode")["state"] == "NOT STARTED"

    r2 = next(r for r in _json("pipeline-runs", "list") if r["name"] == "r2")
    shown = _json("pipeline-runs", "show", r2["id"])
    assert shown["status"] == "FAIL PIPELINE RUN" and shown["nodes"]["explode"]["state"] == "FAILED"
    assert shown["nodes"]["report"]["state"] == "SUCCEEDED", "the exit handler runs after a failure"
    assert shown["spec"]["parameters"] == {"epochs": 1, "rows": 40, "fail": True}
    from mlyard.pipelines import _failing  # what shows FAIL PIPELINE RUN IN PROGRESS while it lists outputs

    assert _failing(r2["id"]) and not _failing(run["id"])

    # rules: a pipeline a schedule uses cannot be deleted; a run can be deleted once it ended
    sched = tmp_path / "s.yaml"
    sched.write_text(json.dumps({"name": "pipe-sched", "pipeline": "example", "cron": "0 0 3 * * *",
                                 "parameters": {"epochs": 1}}))
    assert _json("schedules", "create", "-f", str(sched))["target"] == "pipeline example"
    _one_line_error(mlyard("pipelines", "delete", "example"), "schedule", "pipe-sched")
    bad_sched = tmp_path / "bad-s.yaml"
    bad_sched.write_text(json.dumps({"name": "pipe-bad", "pipeline": "example", "cron": "0 0 3 * * *",
                                     "parameters": {"epochs": "x"}}))
    _one_line_error(mlyard("schedules", "create", "-f", str(bad_sched)), "parameters.epochs", "a int")
    _ok(mlyard("schedules", "delete", "pipe-sched"))
    _ok(mlyard("pipeline-runs", "delete", r2["id"]))
    assert not Path(shown["run_dir"]).exists()
    _ok(mlyard("pipelines", "delete", "example"))
    assert all(p["name"] != "example" for p in _json("pipelines", "list"))


SLOW = """
from kfp import compiler, dsl

@dsl.component(base_image="python:3.11")
def slow(seconds: int):
    import time
    print("sleeping", flush=True)
    time.sleep(seconds)

@dsl.pipeline(name="slow")
def pipe(seconds: int = 120):
    slow(seconds=seconds)

compiler.Compiler().compile(pipe, "slow.yaml")
"""


def test_a_stopped_run_ends_its_steps(stack, tmp_path):
    import subprocess
    import sys

    (tmp_path / "slow.py").write_text(SLOW)  # the KFP SDK reads a component's source from its file
    subprocess.run([sys.executable, "slow.py"], cwd=tmp_path, check=True, capture_output=True)
    _json("pipelines", "upload", str(tmp_path / "slow.yaml"), "--name", "slow")
    run = _json("pipeline-runs", "create", "--pipeline", "slow", "--name", "sleepy")
    from mlyard.pipelines import show_run  # the waits poll in this process: a CLI process a second takes a core

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and show_run(run["id"])["nodes"].get("slow", {}).get("state") != "RUNNING":
        time.sleep(0.5)
    view = _json("pipeline-runs", "show", run["id"])
    assert view["status"] == "RUNNING" and view["nodes"]["slow"]["state"] == "RUNNING", view
    _ok(mlyard("pipeline-runs", "stop", run["id"]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and show_run(run["id"])["status"] != "STOPPED":
        time.sleep(0.5)
    assert _json("pipeline-runs", "show", run["id"])["status"] == "STOPPED"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(Path(os.environ["MLYARD_HOME"]) / "pipeline-runs" / run["id"]) not in ps, "a step outlived the stop"
    _one_line_error(mlyard("pipelines", "delete", "nope"), "pipeline", "not found")


def test_a_run_on_a_kubeflow_pipelines_server(stack):
    """With MLYARD_KFP_HOST set (as on a worker of a cluster that has Kubeflow Pipelines), the
    pipeline-run flow submits through kfp.Client, follows the run and records each step. The server is
    a fake of the KFP REST API on 127.0.0.1 (tests/tasks/kfp_rest_fake.py): no Kubeflow Pipelines can
    run here. The flow runs in a fresh process, as a worker runs it, against the real Prefect server."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tasks"))
    from kfp_rest_fake import KfpRestFake
    from test_user_paths import BIN, user_dir

    _json("pipelines", "upload", str(EXAMPLES / "container.yaml"), "--name", "boxed")
    fake = KfpRestFake(reads_to_finish=2)
    try:
        code = ("from mlyard.flows.pipeline_run import pipeline_run\n"
                "from mlyard.core.specs.pipeline import PipelineRunSpec\n"
                "r = pipeline_run(PipelineRunSpec(name='on-kfp', pipeline='boxed', parameters={'text': 'hi'}))\n"
                "print(r.pipeline_run_id)\n")
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
               "MLYARD_KFP_HOST": fake.url}
        proc = subprocess.run([str(BIN / "python"), "-c", code], cwd=user_dir(), env=env, capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_id = proc.stdout.strip().splitlines()[-1]
    finally:
        fake.close()
    (run,) = fake.runs.values()
    assert run["runtime_config"]["parameters"] == {"text": "hi"}
    assert run["pipeline_spec"]["deploymentSpec"]["executors"]["exec-echo"]["container"]["image"] == "alpine:3.20"
    shown = _json("pipeline-runs", "show", run_id)
    assert shown["status"] == "COMPLETE" and shown["nodes"]["echo"]["state"] == "SUCCEEDED", shown


def test_a_components_code_reaches_nothing_of_the_platform(stack, tmp_path):
    """A pipeline's component is code a member brought: run here, it sees no file of the stack's home (the
    record with the internal token, the databases), none of the platform's credentials in its environment,
    no process of the stack, and writes the platform's code nowhere; its own outputs still reach the run."""
    from kfp import compiler, dsl

    from mlyard.core.settings import Settings

    @dsl.component
    def reach(home: str, source: str, found: dsl.Output[dsl.Artifact]):
        import json
        import os

        def attempt(fn):
            try:
                fn()
                return "REACHED"
            except Exception as exc:  # noqa: BLE001
                return f"held ({type(exc).__name__})"

        def environ():
            names = [n for n in ("PREFECT_API_AUTH_STRING", "MLYARD_INTERNAL_TOKEN", "MLYARD_CATALOG_URL")
                     if n in os.environ]
            if not names:
                raise KeyError("none")

        def others():  # the stack's own processes (their names put together here: this code is on the
            # component's own command line)
            parts = [a + b for a, b in (("prefect", "_server"), ("mlyard", ".service"), ("serving", ".replicas"),
                                        ("mlyard", ".keeper"))]
            seen = [p for p in os.listdir("/proc") if p.isdigit()
                    and any(w in open(f"/proc/{p}/cmdline").read() for w in parts)]
            if not seen:
                raise ProcessLookupError("none")

        result = {"the stack's record": attempt(lambda: open(os.path.join(home, "stack.json")).read(1)),
                  "the home's databases": attempt(lambda: os.listdir(os.path.join(home, "prefect"))),
                  "the platform's credentials": attempt(environ),
                  "the stack's processes": attempt(others),
                  "the platform's code": attempt(lambda: open(source, "r+"))}
        with open(found.path, "w") as fh:
            json.dump(result, fh)

    @dsl.pipeline(name="reach")
    def reach_pipeline(home: str, source: str):
        reach(home=home, source=source)

    compiled = tmp_path / "reach.yaml"
    compiler.Compiler().compile(reach_pipeline, str(compiled))
    _json("pipelines", "upload", str(compiled), "--name", "reach")
    home = str(Settings().home_dir)
    source = str(Path(__file__).resolve().parents[2] / "tasks" / "launch.py")
    made = mlyard("pipeline-runs", "create", "--pipeline", "reach", "--name", "reach-1", "--param", f"home={home}",
                  "--param", f"source={source}", "--wait", "--json")
    run = json.loads(_ok(made))
    _json("pipeline-runs", "download", run["id"], str(tmp_path / "out"), "--task", "reach")
    found = json.loads((tmp_path / "out" / "reach" / "found").read_text())
    assert all(got.startswith("held") for got in found.values()), found
