"""A training's script as an attacker wrote it, run in its sandbox (tasks/sandbox.py) by a stand-in flow
(a process of its own that holds a platform credential in its environment, as a flow does) with real
bubblewrap: every file, socket, process, port and credential of the platform and of other projects it
tries to reach stays out of reach, what it leaves is taken as data, and it dies with its flow. Run as root
(a root-run stack) and as an ordinary user (a user's stack), each a real process of that account.
The stack's side, a member's script run by `mlyard up`, is tests/test_inside.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlyard.tasks import sandbox
from tests.accounts import as_account, user

pytestmark = pytest.mark.skipif(sandbox.refusal() is not None, reason=f"no sandbox here: {sandbox.refusal()}")

ROOT = Path(__file__).resolve().parents[2]
SECRET = "platform-secret-7f3a"

ATTACKER = Path(__file__).resolve().parents[1] / "inside_attacker.py"

# the stand-in flow: holds the platform's credential in its environment, runs the script in its walls
FLOW = r"""import json, os, sys
from pathlib import Path
from mlyard.core.specs import TrainingSpec
from mlyard.tasks.confinement import Confinement
from mlyard.tasks.launch import Workdirs, run_script
a = json.loads(sys.argv[1])
scratch = Path(a["scratch"])
dirs = Workdirs.under(scratch, scratch / "source", {}, None)
lines = []
spec = TrainingSpec(name="attack", source_uri=str(dirs.source), entry_point="main.py",
                    hyperparameters={"targets": json.dumps(a["targets"])})
run_script(spec, dirs, sys.executable, "KR1", {"PATH": os.environ["PATH"]}, scratch / "output.log",
           metric_sink=lambda b: None, echo=lines.append, confinement=Confinement(Path(a["home"]), "auto", "required"))
print(json.dumps(lines))
"""


class _Listeners:
    """What the platform would have open: a Unix socket in the home (the warm runner's) and a port."""

    def __init__(self, home: Path):
        (home / "warm").mkdir(parents=True)
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(home / "warm" / "runner.sock"))
        os.chmod(home / "warm" / "runner.sock", 0o777)
        self.unix.listen()
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.reached: list[str] = []
        for sock, name in ((self.unix, "unix"), (self.tcp, "tcp")):
            threading.Thread(target=self._serve, args=(sock, name), daemon=True).start()

    def _serve(self, sock: socket.socket, name: str) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.reached.append(name)
            conn.close()

    def close(self) -> None:
        self.unix.close()
        self.tcp.close()


def _platform(tmp_path: Path, account: str) -> tuple[Path, Path, Path, _Listeners]:
    """What a script or a model tries to reach: a home (its stack.json, a compiled model, the warm runner's
    socket), another project's storage, a listening port; its run's scratch folder; all the account's."""
    if account != "root" and os.geteuid() != 0:
        pytest.skip("running as another account needs root")
    home = tmp_path / "project" / ".mlyard"
    scratch = home / "runs" / "attack.1"
    (scratch / "source").mkdir(parents=True)
    shutil.copy(ATTACKER, scratch / "source" / "main.py")
    (home / "stack.json").write_text(json.dumps({"internal_token": SECRET}))
    (home / "compiled").mkdir()
    (home / "compiled" / "model.onnx").write_bytes(b"onnx")
    (home / "postgres").mkdir()
    other = tmp_path / "storage" / "other-project"
    other.mkdir(parents=True)
    (other / "documents.txt").write_text("theirs")
    listeners = _Listeners(home)
    if account != "root":
        member = user()
        for path in (tmp_path, *tmp_path.rglob("*")):
            os.lchown(path, member.pw_uid, member.pw_gid)
    return home, scratch, other, listeners


def _attack(tmp_path: Path, account: str, linger: bool = False) -> tuple[subprocess.Popen, Path, Path, _Listeners]:
    home, scratch, other, listeners = _platform(tmp_path, account)
    targets = {"home": str(home), "other": str(other), "port": listeners.port, "needles": ["MLYARD_INTERNAL_TOKEN"],
               "site": next(p for p in sys.path if p.endswith("site-packages")),
               "source": str(ROOT / "tasks" / "launch.py"), "linger": linger, "marker": f"mark-{os.getpid()}"}
    given = {"scratch": str(scratch), "home": str(home), "targets": targets}
    proc = subprocess.Popen(as_account(account, [sys.executable, "-c", FLOW, json.dumps(given)]), cwd=ROOT,
                            env={**os.environ, "MLYARD_INTERNAL_TOKEN": SECRET, "MLYARD_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, scratch, home, listeners


@pytest.fixture
def base(tmp_path, account):
    """The test's folder: pytest's own for root; for the ordinary user one it can pass into (pytest's
    folders are root's alone), removed after."""
    if account == "root":
        yield tmp_path
        return
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mlyard-sandbox-test."))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("account", ["root", "user"])
def test_a_script_reaches_nothing_of_the_platform_and_leaves_only_data(base, account):
    tmp_path = base
    proc, scratch, home, listeners = _attack(tmp_path, account)
    out, err = proc.communicate(timeout=120)
    listeners.close()
    assert proc.returncode == 0, err[-3000:]
    lines = json.loads(out.strip().splitlines()[-1])
    found = json.loads(next(line for line in lines if line.startswith("FOUND ")).removeprefix("FOUND "))
    reached = {name: got for name, got in found["attempts"].items() if not got.startswith("held")}
    assert not reached, reached
    assert len(found["attempts"]) == 14
    assert listeners.reached == [], "nothing the platform listens on was reached"
    assert set(found["own"].values()) == {"ok"}, found["own"]
    assert not any("no sandbox" in line for line in lines), lines

    # what it left, taken as data: the links out and the FIFO are gone, named; the model is there
    removed = sandbox.as_data(scratch / "model") + sandbox.as_data(scratch / "checkpoints")
    assert sorted(r.split(" ")[0] for r in removed) == ["hold-the-reader", "stolen-project", "stolen-project",
                                                        "stolen-record", "stolen-record"], removed
    assert sorted(os.listdir(scratch / "model")) == ["model.txt"]
    assert (home / "stack.json").read_text() == json.dumps({"internal_token": SECRET})
    assert not os.path.exists(Path(sys.prefix) / "evil.pth")


@pytest.mark.parametrize("account", ["root", "user"])
def test_the_sandbox_dies_with_its_flow(base, account):
    """kill -9 of the flow: nothing of the script is left within seconds (it meant to sleep 120 s)."""
    import psutil

    proc, scratch, _, listeners = _attack(base, account, linger=True)
    try:
        deadline = time.monotonic() + 60
        while not (scratch / "model" / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        inside = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        assert any(f"mark-{os.getpid()}" in p.cmdline() for p in inside)
        flow = next(p for p in [psutil.Process(proc.pid), *inside] if "mlyard.tasks.launch" in " ".join(p.cmdline()))
        os.kill(flow.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs(inside, timeout=5)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        listeners.close()
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        proc.wait()


def test_required_refuses_before_the_script_starts_where_no_sandbox_can(tmp_path, monkeypatch):
    from mlyard.core.errors import TrainingFailed
    from mlyard.tasks.confinement import Confinement, confined
    from mlyard.tasks.launch import Workdirs

    monkeypatch.setattr(sandbox, "refusal", lambda: "no user namespaces here (test)")
    dirs = Workdirs.under(tmp_path / "scratch", tmp_path, {}, None)
    invocations = [(["python", "main.py"], {"A": "1"})]
    with pytest.raises(TrainingFailed, match="MLYARD_SANDBOX is 'required' and no user namespaces here"):
        confined(invocations, dirs, sys.executable, Confinement(tmp_path, "off", "required"))
    assert confined(invocations, dirs, sys.executable, Confinement(tmp_path, "off", "auto")) == (
        invocations, ["mlyard: no sandbox: no user namespaces here (test); the script runs with the platform's view "
                      "of this machine (MLYARD_SANDBOX=required refuses such runs)"])


def test_an_environment_is_its_projects_and_read_only_to_the_code_it_runs(tmp_path):
    """Environments were cached by requirements alone and writable by the script: a `.pth` one member wrote
    ran inside the next member's training. Each project gets its own, and a script cannot change it."""
    from mlyard.core.specs import TrainingSpec
    from mlyard.tasks.confinement import Confinement
    from mlyard.tasks.environments import requirements_env
    from mlyard.tasks.launch import Workdirs, run_script
    from tests.tasks.test_launch import _wheel

    home = tmp_path / "home"
    src = home / "runs" / "r" / "source"
    src.mkdir(parents=True)
    _wheel(src)
    (src / "requirements.txt").write_text("./mlyardprobe-1.0-py3-none-any.whl\n")
    (src / "main.py").write_text(
        "import mlyardprobe, os, site, sys\n"
        "target = os.path.join(site.getsitepackages()[0], 'planted.pth')\n"
        "try:\n    open(target, 'w').write('import os; os.system(\"touch /tmp/pwned\")')\n    print('PLANTED')\n"
        "except OSError as exc:\n    print('HELD', type(exc).__name__)\n")
    envs = home / "envs"
    mine, theirs = requirements_env(src, envs, project="pa"), requirements_env(src, envs, project="pb")
    assert mine != theirs and requirements_env(src, envs, project="pa") == mine
    dirs = Workdirs.under(src.parent, src, {}, None)
    lines: list[str] = []
    run_script(TrainingSpec(name="plant", source_uri=str(src), entry_point="main.py"), dirs, mine, "KR1",
               {"PATH": os.environ["PATH"]}, src.parent / "log.txt", metric_sink=lambda b: None, echo=lines.append,
               confinement=Confinement(home, "auto", "required"))
    assert lines[-1].startswith("HELD"), lines
    assert not list(envs.rglob("planted.pth"))


def test_a_stopped_script_gets_its_grace_inside_the_sandbox(tmp_path):
    """Stopping a run sends its process group SIGTERM, then SIGKILL after a grace: bubblewrap dies of the
    SIGTERM at once and takes its sandbox with it, so the script's own handler (a checkpoint saved) never
    ran. The script gets the signal and its grace; its sandbox ends when it exits."""
    from mlyard.core.errors import TrainingStopped
    from mlyard.core.specs import TrainingSpec
    from mlyard.tasks.confinement import Confinement
    from mlyard.tasks.launch import Workdirs, run_script

    src = tmp_path / "home" / "runs" / "r" / "source"
    src.mkdir(parents=True)
    (src / "main.py").write_text(
        "import os, signal, sys, time\n"
        "def saved(*_):\n    time.sleep(1)\n"
        "    open(os.path.join(os.environ['EM_CHECKPOINT_DIR'], 'last.ckpt'), 'w').write('epoch 3')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, saved)\nprint('training', flush=True)\ntime.sleep(60)\n")
    dirs = Workdirs.under(src.parent, src, {}, None)
    lines: list[str] = []
    with pytest.raises(TrainingStopped):
        run_script(TrainingSpec(name="stopped", source_uri=str(src), entry_point="main.py"), dirs, sys.executable,
                   "KR1", {"PATH": os.environ["PATH"]}, src.parent / "log.txt", metric_sink=lambda b: None,
                   echo=lines.append, should_stop=lambda: "stopped by its owner" if "training" in lines else None,
                   confinement=Confinement(tmp_path / "home", "auto", "required"))
    assert (dirs.checkpoint / "last.ckpt").read_text() == "epoch 3"


MODEL = Path(__file__).resolve().parents[1] / "inside_model.py"

# the stand-in batch worker: holds the platform's credential in its environment, scores with a model in its
# sandbox (tasks/model_host.py), as a batch inference's worker does
WORKER = r"""import json, sys
from pathlib import Path
import pandas as pd
from mlyard.tasks import model_host
a = json.loads(sys.argv[1])
model = model_host.load(Path(a["model"]), "required")
predictions, _ = model.predict(pd.DataFrame({"targets": [json.dumps(a["targets"])]}), False)
model.close()
print(predictions[0])
"""


@pytest.mark.parametrize("account", ["root", "user"])
def test_a_model_reaches_nothing_of_the_platform_from_its_sandbox(base, account):
    """A member's model (tests/inside_model.py), scored by a stand-in batch worker as root and as an
    ordinary user: its `predict` makes every attempt of the attacker's from inside the model's sandbox."""
    import mlflow.pyfunc

    tmp_path = base
    home, _, other, listeners = _platform(tmp_path, account)
    model = tmp_path / "model"
    mlflow.pyfunc.save_model(model, python_model=str(MODEL), code_paths=[str(ATTACKER)], pip_requirements=[])
    if account != "root":
        member = user()
        for path in (model, *model.rglob("*")):
            os.lchown(path, member.pw_uid, member.pw_gid)
    targets = {"home": str(home), "other": str(other), "port": listeners.port, "service": listeners.port, "needles": ["MLYARD_INTERNAL_TOKEN"], "own_files": [str(model)],
               "site": next(p for p in sys.path if p.endswith("site-packages")), "source": str(ROOT / "tasks" / "launch.py")}
    worker = subprocess.run(as_account(account, [sys.executable, "-c", WORKER, json.dumps({"model": str(model), "targets": targets})]),
                            cwd=ROOT, env={**os.environ, "MLYARD_INTERNAL_TOKEN": SECRET, "MLYARD_HOME": str(home)},
                            capture_output=True, text=True, timeout=180)
    listeners.close()
    assert worker.returncode == 0, worker.stderr[-3000:]
    found = json.loads(worker.stdout.strip().splitlines()[-1])
    reached = {name: got for name, got in found.items() if not got.startswith("held")}
    assert not reached, reached
    assert len(found) == 13 and listeners.reached == [], found
