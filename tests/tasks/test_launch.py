"""The training contract and the process supervisor, with real processes."""

import base64
import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from mlyard.core.errors import TrainingFailed, TrainingStopped
from mlyard.core.specs import TrainingSpec
from mlyard.tasks.environments import requirements_env
from mlyard.tasks.launch import Supervisor, Workdirs, build_invocation

ECHO_ENV = """
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("EM_")}}))
"""


def _spec(**kw):
    return TrainingSpec(name="t", source_uri=".", entry_point="main.py", **kw)


def test_contract_args_and_env(tmp_path, algorithm):
    src = algorithm(ECHO_ENV)
    spec = _spec(hyperparameters={"learning_rate": 0.1, "optimizer": "adam", "use-bn": True},
                 datasets={"train": "/x"})
    dirs = Workdirs.under(tmp_path / "w", src, {"train": tmp_path / "ds"}, None)
    platform = {"PREFECT_API_AUTH_STRING": "admin:pw", "MLYARD_INTERNAL_TOKEN": "t", "MLYARD_S3_SECRET_ACCESS_KEY": "k",
                "MLYARD_CATALOG_URL": "postgresql://u:pw@db/catalog", "AWS_SECRET_ACCESS_KEY": "k", "KUBECONFIG": "/k"}
    argv, env = build_invocation(spec, dirs, sys.executable, "kr1", {"PATH": os.environ["PATH"], **platform})
    lines = []
    Supervisor(argv, env, src, lines.append).run()
    got = json.loads(lines[0])
    assert got["argv"] == ["--learning_rate", "0.1", "--optimizer", "adam", "--use-bn", "true"]
    e = got["env"]
    assert e["EM_HP_LEARNING_RATE"] == "0.1" and e["EM_HP_USE_BN"] == "true"
    assert json.loads(e["EM_HPS"]) == {"learning_rate": "0.1", "optimizer": "adam", "use-bn": "true"}
    assert e["EM_DATASET_TRAIN"] == str(tmp_path / "ds") and json.loads(e["EM_DATASETS"]) == {"train": str(tmp_path / "ds")}
    assert e["EM_MODEL_DIR"] == str(dirs.model) and Path(e["EM_MODEL_DIR"]).is_dir()
    assert e["EM_SOURCE_DIR"] == str(src) and e["EM_ENTRY_POINT"] == "main.py" and e["EM_REGION"] == "kr1"
    assert {"EM_CHECKPOINT_DIR", "EM_CHECKPOINT_INPUT_DIR", "EM_TENSORBOARD_LOG_DIR"} <= set(e)
    assert not set(platform) & set(e), "the platform's credentials never reach a user's script"


def test_torchrun_invocation(tmp_path):
    spec = _spec(torchrun=True, processes_per_node=2)
    dirs = Workdirs.under(tmp_path, tmp_path, {}, None)
    argv, _ = build_invocation(spec, dirs, "py", "r", {})
    assert argv[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in argv and "--standalone" in argv


def test_failure_reports_exit_code_and_last_lines(algorithm):
    src = algorithm("import sys\nprint('loading data')\nraise SystemExit('disk full')\n")
    sup = Supervisor([sys.executable, str(src / "main.py")], os.environ, src, lambda _: None)
    with pytest.raises(TrainingFailed) as info:
        sup.run()
    assert info.value.exit_code == 1 and "disk full" in str(info.value) and "loading data" in info.value.last_lines


GRANDCHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(os.environ["PIDFILE"] + ".part", "w") as fh:  # whole or not there: the test stops once it exists
    fh.write(str(child.pid))
os.replace(os.environ["PIDFILE"] + ".part", os.environ["PIDFILE"])
print("started", flush=True)
time.sleep(300)
"""


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.1)
    return False


def test_stop_kills_the_whole_process_group(algorithm, tmp_path):
    src = algorithm(GRANDCHILD)
    pidfile = tmp_path / "pid"
    started = []
    stop_after = time.monotonic() + 60

    def should_stop():
        return "user asked" if pidfile.exists() and started else (None if time.monotonic() < stop_after else "timeout")

    sup = Supervisor([sys.executable, str(src / "main.py")], {**os.environ, "PIDFILE": str(pidfile)}, src,
                     started.append, should_stop=should_stop, poll_seconds=0.1, grace_seconds=2)
    with pytest.raises(TrainingStopped, match="user asked"):
        sup.run()
    assert _gone(int(pidfile.read_text())), "the script's child survived the stop"


def test_stop_ends_every_node_and_what_each_started(algorithm, tmp_path):
    """The nodes of a multi-node training on this machine share one process group: a stop ends them all."""
    src = algorithm(GRANDCHILD)
    pidfiles = [tmp_path / f"pid{n}" for n in range(3)]
    lines: list[str] = []
    deadline = time.monotonic() + 60

    def should_stop():
        if all(p.exists() for p in pidfiles):
            return "user asked"
        return None if time.monotonic() < deadline else "timeout"

    argv = [sys.executable, str(src / "main.py")]
    sup = Supervisor(argv, {**os.environ, "PIDFILE": str(pidfiles[0])}, src, lines.append, should_stop=should_stop,
                     poll_seconds=0.1, grace_seconds=2,
                     more=[(argv, {**os.environ, "PIDFILE": str(p)}) for p in pidfiles[1:]])
    with pytest.raises(TrainingStopped, match="user asked"):
        sup.run()
    assert all(_gone(int(p.read_text())) for p in pidfiles), "a node's child survived the stop"
    assert all(proc.returncode is not None for proc in sup.procs)


def test_max_run_time_fails_with_reason(algorithm, tmp_path):
    src = algorithm(GRANDCHILD)
    pidfile = tmp_path / "pid"
    sup = Supervisor([sys.executable, str(src / "main.py")], {**os.environ, "PIDFILE": str(pidfile)}, src,
                     lambda _: None, max_run_time_seconds=1.5, poll_seconds=0.1, grace_seconds=2)
    t0 = time.monotonic()
    with pytest.raises(TrainingFailed, match="max run time of 1.5 s"):
        sup.run()
    assert time.monotonic() - t0 < 10
    assert _gone(int(pidfile.read_text()))


def _wheel(dest: Path, name: str = "mlyardprobe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, so that installing requirements needs no network."""
    path = dest / f"{name}-{version}-py3-none-any.whl"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for f, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{f},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_requirements_env_is_isolated_and_cached(algorithm, tmp_path):
    # pip runs in a sandbox that sees the algorithm's folder: a wheel it ships is named relative to it
    src = algorithm("import mlyardprobe, sklearn\nprint('value', mlyardprobe.VALUE)\n",
                    requirements="./mlyardprobe-1.0-py3-none-any.whl\n")
    _wheel(src)
    envs = tmp_path / "envs"
    logs = []
    python = requirements_env(src, envs, log=logs.append)
    assert python != sys.executable
    lines = []
    Supervisor([python, str(src / "main.py")], os.environ, src, lines.append).run()
    assert lines == ["value 42"]  # the new package and the platform's own sklearn are both visible
    with pytest.raises(ImportError):
        __import__("mlyardprobe")  # the platform's environment is untouched
    t0 = time.monotonic()
    assert requirements_env(src, envs, log=logs.append) == python
    assert time.monotonic() - t0 < 1 and "reusing" in logs[-1]


def test_broken_requirements_fail_and_leave_no_env(algorithm, tmp_path):
    src = algorithm("print(1)\n", requirements="/nonexistent/pkg-1.0-py3-none-any.whl\n")
    with pytest.raises(TrainingFailed, match="installing requirements.txt failed"):
        requirements_env(src, tmp_path / "envs")
    assert [p for p in (tmp_path / "envs").iterdir() if p.is_dir()] == []


def test_no_requirements_uses_platform_python(algorithm, tmp_path):
    assert requirements_env(algorithm("print(1)\n"), tmp_path / "envs") == sys.executable
