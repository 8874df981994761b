"""The paths users take, taken as they take them: the CLI and Python in a fresh process started in
the user's project directory, with none of the test harness's environment variables (no
PREFECT_API_URL, no MLYARD_HOME). They must find the running platform on their own, never start a
hidden Prefect server, and refuse bad input in one line before any run is created."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import all_gone, flow_of, marked

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BIN = Path(sys.executable).parent


def user_dir() -> Path:
    """The directory whose .mlyard is the running test platform (see conftest.py)."""
    return Path(os.environ["MLYARD_HOME"]).parent


def shell(*argv: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command as from a user's shell: PATH, HOME and LANG only."""
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    return subprocess.run(list(argv), cwd=cwd or user_dir(), env=env, capture_output=True, text=True, timeout=timeout)


def mlyard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return shell(str(BIN / "mlyard"), *args, cwd=cwd)


def python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return shell(str(BIN / "python"), "-c", textwrap.dedent(code), cwd=cwd)


def project(name: str) -> Path:
    """A new directory inside the user's project (below the directory that holds .mlyard)."""
    path = user_dir() / name
    path.mkdir(parents=True)
    return path


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "temporary server" not in proc.stdout + proc.stderr
    return proc.stdout


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_python_call_from_a_fresh_interpreter_is_a_training_the_cli_shows_and_registers(stack):
    work = project("python-call")  # a subdirectory: the platform is found in a parent, as git finds .git
    shutil.copytree(EXAMPLES / "sklearn_digits", work / "algo", dirs_exist_ok=True)
    out = _ok(python("""
        import mlyard
        result = mlyard.train({"name": "from-python", "experiment": "user-paths", "source_uri": "algo",
                               "entry_point": "train.py", "datasets": {"digits": "algo"}},
                              sets={"hyperparameters": {"epochs": 1}})
        print("ID", result.training_id)
    """, cwd=work))
    training_id = out.split("ID ")[-1].strip()

    shown = json.loads(_ok(mlyard("trainings", "show", training_id[:8], "--json")))  # a table's short id
    assert shown["id"] == training_id and shown["status"] == "COMPLETE" and shown["name"] == "from-python"
    _one_line_error(mlyard("trainings", "show", "ffff0000"), "ffff0000", "trainings list")
    assert shown["spec"]["source_uri"] == str(work / "algo"), "a relative path is stored absolute"
    assert shown["spec"]["hyperparameters"] == {"epochs": 1}
    assert shown["links"]["prefect"].endswith(f"/runs/flow-run/{training_id}") and shown["mlflow_run_id"]
    # one record across the engines: the flow run links its MLflow run (an artifact), the MLflow run links
    # back in its description (Markdown: clickable in MLflow's UI), and names the datasets it read
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[training_id])))
    assert any(shown["links"]["mlflow"].split("?")[0] in str(a.data) and a.key == "mlflow-run" for a in artifacts), \
        [(a.type, a.data) for a in artifacts]
    run = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{user_dir() / '.mlyard' / 'mlflow.db'}"
                       ).get_run(shown["mlflow_run_id"])
    assert f"]({shown['links']['prefect']})" in run.data.tags["mlflow.note.content"], run.data.tags
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    # its structured log records: the script's own lines too, found by a start of the id
    lines = [json.loads(x) for x in _ok(mlyard("logs", "--training", training_id[:8], "--json")).splitlines()]
    assert {d["category"] for d in lines} == {"mlyard.training"} and {d["trainingId"] for d in lines} == {training_id}
    assert {"category", "logLevel", "body", "logType", "time", "trainingId"} <= set(lines[0])
    assert any(d["body"].startswith("epoch=1 loss=") for d in lines), [d["body"] for d in lines]
    assert lines[-1]["time"] >= lines[0]["time"] and all(d["time"].endswith("Z") for d in lines)
    assert _ok(mlyard("logs", "--training", training_id, "--level", "ERROR", "--json")) == ""
    table = _ok(mlyard("logs", "-c", "training", "--since", "1h", "-n", "3"))
    assert len(table.splitlines()) == 3 and "training" in table
    _one_line_error(mlyard("logs", "--category", "trainings"), "category", "trainings", "training, tuning")
    _one_line_error(mlyard("logs", "--since", "yesterday"), "since", "yesterday")
    mv = json.loads(_ok(mlyard("models", "create", "from-python", "--from-training", training_id[:8], "--alias",
                               "champion", "--json")))  # the short id a table shows, as for `show`
    assert mv["lineage"]["training_id"] == training_id and mv["aliases"] == ["champion"]
    assert mv["links"]["mlflow"].endswith(f"/#/models/from-python/versions/{mv['version']}?workflowType=machine_learning")
    assert mv["links"]["mlflow_run"].endswith(f"/runs/{shown['mlflow_run_id']}?workflowType=machine_learning")
    # how it will run was settled at registration: compiled, its labels from its decision function's graph
    assert mv["runtime"] == "onnxruntime (compiled at registration)", mv["runtime"]  # the demo's SGD model too
    model = json.loads(_ok(mlyard("models", "show", "from-python", "--json")))
    assert model["versions"][0]["aliases"] == ["champion"] and "T" in model["versions"][0]["created_at"]


def test_a_run_queued_from_python_can_be_waited_for_and_gives_what_a_direct_call_gives(stack):
    """`wait=False` queues the run on the local pool; the Run's wait() then holds the same result a direct
    call returns, from a fresh interpreter without the harness's variables."""
    work = project("python-wait")
    shutil.copytree(EXAMPLES / "sklearn_digits", work / "algo", dirs_exist_ok=True)
    out = _ok(python("""
        import mlyard
        queued = mlyard.train({"name": "queued-then-waited", "experiment": "user-paths", "source_uri": "algo",
                               "entry_point": "train.py", "hyperparameters": {"epochs": 1}}, wait=False)
        result = queued.wait(timeout=240).result
        print("RESULT", type(result).__name__, result.training_id == queued.id, sorted(result.metrics))
    """, cwd=work))
    assert "RESULT TrainingResult True" in out and "accuracy" in out.split("RESULT")[-1], out


def test_a_model_is_compiled_at_registration_and_its_first_serve_loads_it(stack):
    """`mlyard models create` compiles and verifies a scikit-learn model once: the version's very first
    `serve` loads the cached ONNX model (it compiled then, 4.4 s for a random forest)."""
    work = project("compiled")
    _ok(python("""
        import mlflow.sklearn
        from sklearn.datasets import load_iris
        from sklearn.ensemble import RandomForestClassifier
        x, y = load_iris(return_X_y=True)
        mlflow.sklearn.save_model(RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y), "rf",
                                  skops_trusted_types=["sklearn.tree._tree.Tree"], pip_requirements=["scikit-learn"])
    """, cwd=work))
    mv = json.loads(_ok(mlyard("models", "create", "rf-ready", "--artifact-uri", "rf", "--json", cwd=work)))
    assert mv["runtime"] == "onnxruntime (compiled at registration)", mv["runtime"]
    printed = _first_serve("rf-ready/1")
    assert "runtime: onnxruntime (cached)" in printed and "compiled now" not in printed, printed


def _first_serve(model: str) -> str:
    """What `mlyard serve MODEL` prints, from a user's shell, up to its ready line."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    proc = subprocess.Popen([str(BIN / "mlyard"), "serve", model, "--port", str(port)], cwd=user_dir(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving "):
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    return "".join(lines)


def test_without_a_running_platform_every_entry_point_says_how_to_start_one(tmp_path):
    started = time.monotonic()
    proc = mlyard("trainings", "list", cwd=tmp_path)
    assert time.monotonic() - started < 20
    _one_line_error(proc, "mlyard up")
    proc = python("""
        import mlyard
        from mlyard.core.errors import NotConnected
        try:
            mlyard.train({"name": "x", "source_uri": ".", "entry_point": "x.py"})
        except NotConnected as exc:
            print("refused:", exc)
    """, cwd=tmp_path)
    assert "refused: no mlyard platform is running" in _ok(proc)
    assert not (tmp_path / ".mlyard" / "prefect" / "prefect.db").exists(), "no hidden Prefect server was started"


def test_bad_input_is_refused_in_one_line_before_a_run_is_created(stack):
    tmp_path = project("bad-input")
    before = json.loads(_ok(mlyard("trainings", "list", "--json", "--limit", "500")))
    (tmp_path / "algo").mkdir()
    (tmp_path / "algo" / "train.py").write_text("print('hi')\n")
    spec = tmp_path / "train.yaml"
    spec.write_text("name: typo\nsource_uri: algo\nentry_point: trian.py\ndatasets: {digits: data/missing}\n")
    _one_line_error(mlyard("train", "-f", str(spec), cwd=tmp_path), "datasets.digits", "data/missing")
    spec.write_text("name: typo\nsource_uri: algo\nentry_point: trian.py\n")
    _one_line_error(mlyard("train", "-f", str(spec), cwd=tmp_path), "entry_point", "trian.py", "train.py")
    _one_line_error(mlyard("train", "-f", str(spec), "--submit", cwd=tmp_path), "entry_point")
    after = json.loads(_ok(mlyard("trainings", "list", "--json", "--limit", "500")))
    assert len(after) == len(before), "a refused spec must not leave a run behind"

    batch = tmp_path / "batch.yaml"
    batch.write_text("name: nomodel\nmodel: nosuchmodel@champion\ninput_uri: algo\ninput_format: jsonl\n"
                     "output_uri: out\n")
    _one_line_error(mlyard("batch", "-f", str(batch), cwd=tmp_path), "model", "nosuchmodel@champion")
    assert not (tmp_path / "out").exists()
    proc = mlyard("--debug", "batch", "-f", str(batch), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr, "--debug shows the traceback"


def test_submit_resolves_relative_paths_where_the_command_runs(stack):
    tmp_path = project("submit")
    (tmp_path / "algo").mkdir()
    (tmp_path / "algo" / "train.py").write_text("import time\ntime.sleep(60)\n")
    (tmp_path / "train.yaml").write_text("name: submitted\nsource_uri: algo\nentry_point: train.py\n")
    sub = json.loads(_ok(mlyard("train", "-f", "train.yaml", "--submit", "--json", cwd=tmp_path)))
    shown = json.loads(_ok(mlyard("trainings", "show", sub["id"], "--json")))
    assert shown["spec"]["source_uri"] == str(tmp_path / "algo")
    _ok(mlyard("trainings", "stop", sub["id"], "--json"))


def test_ctrl_c_on_mlyard_train_ends_stopped(stack):
    import signal

    work = project("ctrl-c")
    (work / "algo").mkdir()
    (work / "algo" / "main.py").write_text("import time\nprint('loss=1', flush=True)\ntime.sleep(120)\n")
    (work / "train.yaml").write_text("name: interrupted\nexperiment: user-paths\nsource_uri: algo\nentry_point: main.py\n")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "PYTHONFAULTHANDLER": "1"}  # a hang is then shown: SIGABRT prints every thread's stack

    def as_a_terminal_starts_it() -> None:
        # A shell's foreground job takes Ctrl-C with the default disposition, whatever the harness's own is. A
        # test run started in the background by a script (`make test &`) has SIGINT ignored, as POSIX shells
        # start background jobs, and an ignored signal passes through fork and exec to the CLI, which then
        # never saw the Ctrl-C: that is how this test failed in such runs.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    harness = {k: v for k, v in (line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
               if k in ("SigBlk", "SigIgn")}
    proc = subprocess.Popen([str(BIN / "mlyard"), "train", "-f", "train.yaml"], cwd=work, env=env, text=True,
                            preexec_fn=as_a_terminal_starts_it,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout:  # the flow's log: wait until the script runs
            if "loss=1" in line:
                break
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cli = {k: v.strip() for k, v in (line.split(":", 1) for line in
                                             Path(f"/proc/{proc.pid}/status").read_text().splitlines())
                   if k in ("SigBlk", "SigIgn", "SigCgt")}
            proc.send_signal(signal.SIGABRT)
            time.sleep(2)
            proc.kill()
            raise AssertionError(f"mlyard train did not end within 60 s of Ctrl-C (signals of the test process: "
                                 f"{harness}, of the CLI: {cli}); it "
                                 "printed:\n" + proc.stdout.read()) from None
    finally:
        proc.kill()
        proc.stdout.close()
    listed = json.loads(_ok(mlyard("trainings", "list", "--json")))
    mine = [t for t in listed if t["name"] == "interrupted"]
    assert mine and mine[0]["status"] == "STOPPED" and "Ctrl-C" in mine[0]["cause"], mine


def test_a_killed_training_ends_failed_in_mlflow_too(stack, settings):
    """kill -9 of a training's flow process: Prefect marks it CRASHED (its worker saw it end), and the
    mlyard API ends its MLflow run FAILED with the reason, instead of leaving it RUNNING for ever."""
    import signal

    from mlyard.registry.tracking import Tracking

    work = project("killed")
    (work / "algo").mkdir()
    (work / "algo" / "main.py").write_text('import time\nprint("loss=1", flush=True)\ntime.sleep(120)\n')
    marker = f"mark-{os.getpid()}-killed"  # in the script's command line (its hyperparameter): found from outside
    (work / "train.yaml").write_text("name: killed\nexperiment: user-paths\nsource_uri: algo\nentry_point: main.py\n"
                                     f"hyperparameters: {{marker: {marker}}}\n")
    sub = json.loads(_ok(mlyard("train", "-f", "train.yaml", "--submit", "--json", cwd=work)))
    deadline = time.monotonic() + 120
    while not marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    script_pid = marked(marker)[0]
    flow_pid = flow_of(script_pid)
    tracking = Tracking(settings.mlflow_uri)
    [run] = tracking.client.search_runs([tracking.experiment_id("user-paths")],
                                        filter_string=f"tags.`mlyard.training_id` = '{sub['id']}'")
    assert run.info.status == "RUNNING"
    os.kill(flow_pid, signal.SIGKILL)
    assert all_gone(marker, 10), "the script outlived its flow"
    deadline = time.monotonic() + 60
    while tracking.get_run(run.info.run_id).status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    ended = tracking.get_run(run.info.run_id)
    assert ended.status == "FAILED", "the MLflow run of a crashed training is still RUNNING after 60 s"
    assert ended.tags["mlyard.status_reason"].startswith("its Prefect flow run crashed: ")
    shown = json.loads(_ok(mlyard("trainings", "show", sub["id"], "--json")))
    assert shown["status"] == "FAIL TRAIN"


def test_a_failing_training_from_the_cli_ends_in_its_line_without_tracebacks(stack):
    """The run's log lines stream, then `FAIL TRAIN ...` with the script's last lines; the tracebacks of
    mlyard's and Prefect's frames stay in the run's log in the Prefect UI (`--debug` prints them too)."""
    work = project("failing-cli")
    (work / "algo").mkdir()
    (work / "algo" / "main.py").write_text('print("epoch=1 loss=0.5")\nraise SystemExit("explode")\n')
    (work / "train.yaml").write_text("name: failing-cli\nexperiment: user-paths\nsource_uri: algo\nentry_point: main.py\n")
    proc = mlyard("train", "-f", "train.yaml", cwd=work)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Task run 'run-entry-point" in proc.stderr  # the log itself still streams
    assert proc.stderr.strip().splitlines()[-1].startswith("FAIL TRAIN: the entry point failed (exit code 1)")
    assert "explode" in proc.stderr.strip().splitlines()[-1]


def test_a_users_script_sees_none_of_the_platforms_credentials(stack):
    """The training's entry point gets the EasyMaker contract (EM_*) and what its spec names, never what the
    platform holds: the CLI process that runs the flow holds the Prefect admin string (read from the
    stack's private home), and the script must not inherit it."""
    from mlyard.tasks.launch import PLATFORM_CREDENTIALS

    work = project("no-credentials")
    (work / "main.py").write_text("import json, os\nprint('SEEN', json.dumps(sorted(k for k in os.environ if k in "
                                  f"{sorted(PLATFORM_CREDENTIALS)!r})), 'HAS_EM', 'EM_MODEL_DIR' in os.environ)\n")
    (work / "t.yaml").write_text("name: no-credentials\nexperiment: user-paths\nsource_uri: .\nentry_point: main.py\n")
    proc = mlyard("train", "-f", "t.yaml", cwd=work)
    _ok(proc)
    line = next(ln for ln in (proc.stdout + proc.stderr).splitlines() if "SEEN" in ln)
    assert line.split("SEEN ", 1)[1] == "[] HAS_EM True", line
