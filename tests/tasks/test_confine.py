"""A user's entry point is kept from the platform's files and processes (tasks/confine.py, Landlock): the
stack's home is out of its reach but for its own run's folders, it cannot signal the flow that started it,
and it works as before everywhere else. Real processes, the kernel's Landlock (this machine's has ABI 7);
the pod's side (the settings Secret, the flow's environment as user 10001) is in
tests/infra/test_kubernetes_worker.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mlyard.core.specs import TrainingSpec
from mlyard.tasks import confine
from mlyard.tasks.launch import Confinement, Workdirs

pytestmark = pytest.mark.skipif(confine.abi_version() < 1, reason="this kernel has no Landlock")

SCRIPT = """import json, os, signal, tempfile
def reach(path, mode="r"):
    try:
        with open(path, mode) as f:
            f.write("x") if "w" in mode else f.read(1)
        return "ok"
    except OSError as exc:
        return type(exc).__name__
found = {
    "secret": reach(os.environ["SECRET"]),
    "catalog": reach(os.environ["CATALOG"]),
    "plant": reach(os.path.join(os.environ["HOME_DIR"], "planted"), "w"),
    "own source": reach(os.path.join(os.environ["EM_SOURCE_DIR"], "main.py")),
    "dataset": reach(os.path.join(os.environ["EM_DATASET_TRAIN"], "rows.csv")),
    "model dir": reach(os.path.join(os.environ["EM_MODEL_DIR"], "model.txt"), "w"),
    "beside the home": reach(os.environ["BESIDE"]),
    "tempfile": os.path.dirname(tempfile.mkstemp()[1]) == os.environ.get("TMPDIR"),
}
try:
    os.kill(os.getppid(), 0)
    found["signal the flow"] = "ok"
except OSError as exc:
    found["signal the flow"] = type(exc).__name__
print("FOUND " + json.dumps(found), flush=True)
"""


def _run(tmp_path: Path, mode: str) -> tuple[dict, list[str]]:
    home = tmp_path / "project" / ".mlyard"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "token").write_text("the platform's")
    (home / "catalog.db").write_text("rows")
    scratch = home / "runs" / "run-1"
    source, data = scratch / "source", scratch / "datasets" / "train"
    for folder in (source, data):
        folder.mkdir(parents=True)
    (source / "main.py").write_text(SCRIPT)
    (data / "rows.csv").write_text("1\n2\n")
    beside = tmp_path / "project" / "notes.txt"  # the user's own files next to the home stay theirs
    beside.write_text("mine")
    dirs = Workdirs.under(scratch, source, {"train": data}, None)
    spec = TrainingSpec(name="confined", source_uri=str(source), entry_point="main.py")
    lines: list[str] = []
    env = {"PATH": os.environ["PATH"], "SECRET": str(home / "secrets" / "token"), "CATALOG": str(home / "catalog.db"),
           "HOME_DIR": str(home), "BESIDE": str(beside)}
    import subprocess

    # a child process of its own plays the flow: confining makes the flow's process non-dumpable
    code = ("import sys, json; from pathlib import Path; from mlyard.tasks.launch import *; from mlyard.core.specs import TrainingSpec\n"
            "a = json.loads(sys.argv[1]); lines = []\n"
            "d = Workdirs(**{k: Path(v) if isinstance(v, str) else v for k, v in a['dirs'].items()})\n"
            "d.datasets = {k: Path(v) for k, v in a['dirs']['datasets'].items()}\n"
            "run_script(TrainingSpec(**a['spec']), d, sys.executable, 'KR1', a['env'], Path(a['log']),\n"
            "           metric_sink=lambda b: None, echo=lines.append,\n"
            "           confinement=Confinement(Path(a['home']), a['mode']))\n"
            "print(json.dumps(lines))\n")
    given = {"dirs": {"source": str(dirs.source), "model": str(dirs.model), "checkpoint": str(dirs.checkpoint),
                      "checkpoint_input": None, "tensorboard": str(dirs.tensorboard),
                      "datasets": {k: str(v) for k, v in dirs.datasets.items()}},
             "spec": spec.model_dump(mode="json"), "env": env, "log": str(scratch / "log.txt"), "home": str(home),
             "mode": mode}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(given)], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    lines = json.loads(out.stdout.strip().splitlines()[-1])
    found = next(json.loads(line.removeprefix("FOUND ")) for line in lines if line.startswith("FOUND "))
    return found, lines


def test_the_script_reaches_its_run_and_not_the_platform(tmp_path):
    found, _ = _run(tmp_path, "auto")
    assert not (tmp_path / "project" / ".mlyard" / "planted").exists()
    assert found["secret"] == found["catalog"] == found["plant"] == "PermissionError", found
    assert found["own source"] == found["dataset"] == found["model dir"] == found["beside the home"] == "ok", found
    assert found["tempfile"] is True, "temporary files go to the run's scratch folder"
    if confine.abi_version() >= 6:
        assert found["signal the flow"] == "PermissionError", found


def test_off_leaves_the_script_as_it_was(tmp_path):
    found, lines = _run(tmp_path, "off")
    assert found["secret"] == found["catalog"] == "ok", found
    assert not any("Landlock" in line for line in lines)


def test_without_landlock_auto_says_so_and_required_refuses(tmp_path, monkeypatch):
    from mlyard.tasks import confinement

    monkeypatch.setattr(confine, "abi_version", lambda: 0)
    invocations = [(["python", "main.py"], {"A": "1"})]
    dirs = Workdirs.under(tmp_path / "scratch", tmp_path, {}, None)
    assert confinement.confined(invocations, dirs, sys.executable, Confinement(tmp_path, "auto")) == (
        invocations, [confinement.UNCONFINED])
    (argv, env), = confinement.confined(invocations, dirs, sys.executable, Confinement(tmp_path, "required"))[0]
    assert "--required" in argv and argv[-2:] == ["python", "main.py"] and env["TMPDIR"].startswith(str(tmp_path))


def test_the_launcher_refuses_in_one_line_where_it_cannot_confine(tmp_path):
    import subprocess

    # the launcher's own check, with Landlock made unavailable to it: a seccomp-free way is an ABI it rejects,
    # so call main() with a kernel answer of 0 through the module in a child process
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import confine; confine.abi_version = lambda: 0; "
            "sys.exit(confine.main(['--required', '--', 'true']))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(Path(confine.__file__).parent)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == confine.UNCONFINED_EXIT
    assert out.stderr.count("\n") == 1 and "MLYARD_SCRIPT_CONFINEMENT" in out.stderr and "Landlock" in out.stderr


def test_only_what_the_run_uses_inside_the_home_is_kept(tmp_path):
    """A kept folder opens all beneath it: an interpreter at /bin/python (whose environment's root is /) or a
    source outside the home must never become a rule."""
    from mlyard.tasks import confinement

    home, outside = tmp_path / "home", tmp_path / "src"
    outside.mkdir()
    dirs = Workdirs.under(home / "runs" / "r", outside, {}, None)
    (argv, _), = confinement.confined([(["python", "main.py"], {})], dirs, "/bin/python3", Confinement(home, "auto"))[0]
    keeps = [argv[i + 1] for i, a in enumerate(argv) if a == "--keep"]
    assert keeps == [str((home / "runs" / "r").resolve())], keeps
