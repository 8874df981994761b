"""What ships is what runs: mlyard's wheel, built from this checkout and installed (not editable) into a new
virtual environment outside it, runs a user's first hour from a project folder of their own with nothing of
the checkout or of the test harness around it: `mlyard --help`, `mlyard up`, a training of a script in that
folder from the CLI and from Python, a model from it served behind an endpoint, `mlyard down`. The folder
holds the names other tools' projects have (`tasks.py`, `flows/`, `core.py`, `serving/`): the wheel installs
one import name, `mlyard`, and nothing of it imports theirs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

SCRIPT = """\
import os

import mlflow.sklearn
import numpy as np
from sklearn.linear_model import LinearRegression

x = np.arange(10.0).reshape(-1, 1)
model = LinearRegression().fit(x, 2 * x.ravel() + 1)
print(f"r2={model.score(x, 2 * x.ravel() + 1)}")
mlflow.sklearn.save_model(model, os.environ["EM_MODEL_DIR"])
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder: what it left would ship too
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(out), str(ROOT)], check=True, timeout=300, cwd=out)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return next(out.glob("mlyard-*.whl"))


def test_the_wheel_holds_every_module_and_every_file_mlyard_reads_under_one_name(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    parts = ("core", "flows", "tasks", "tuning", "schedules", "registry", "serving", "infra")
    sources = {str(p.relative_to(ROOT)) for folder in ("mlyard", *parts)
               for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    shipped = {s for s in sources if not s.endswith(".md") or s == "infra/README.md"}
    shipped -= {s for s in sources if s.startswith("infra/gateway-api/")}  # the tests' npm validator
    assert {s if s.startswith("mlyard/") else f"mlyard/{s}" for s in shipped} - names == set()
    assert {"mlyard/warm/cli.py", "mlyard/infra/prefect.yaml", "mlyard/infra/gpu-job-template.json",
            "mlyard/infra/k8s/overlays/dev/kustomization.yaml", "mlyard/infra/endpoint/deployment.yaml.j2",
            "mlyard/tasks/code_host.py", "mlyard/core/specs/training.py"} <= names
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"mlyard"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["mlyard"]


def test_the_installed_wheel_runs_a_users_first_hour_from_an_empty_folder(wheel, tmp_path):
    # a project folder deep enough that PostgreSQL's socket path needs the short link (mlyard/postgres.py)
    venv, folder = tmp_path / "venv", tmp_path / "projects-of-a-team-with-long-names" / "first-hour-with-mlyard" / "work"
    folder.mkdir(parents=True)
    from mlyard.core.settings import Settings

    link = Settings(home=folder / ".mlyard").pgsocket_dir
    assert link != (folder / ".mlyard" / "postgres").resolve()
    # uv links the packages `make install` already fetched: seconds, not minutes
    subprocess.run([str(BIN / "uv"), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    subprocess.run([str(BIN / "uv"), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-c",
                    str(ROOT / "constraints.txt"), str(wheel)], check=True, timeout=600)
    env = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8", "MLYARD_PREFECT_PORT": str(free_port()), "MLYARD_API_PORT": str(free_port()),
           "MLYARD_GATEWAY_PORT": str(free_port()), "MLYARD_DOOR_PORT": str(free_port()),
           "MLYARD_MLFLOW_UI_PORT": str(free_port()),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}

    def mlyard(*args: str, timeout: float = 300) -> str:
        proc = subprocess.run(["mlyard", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"mlyard {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    assert "Start the embedded stack" in mlyard("--help")
    python = str(venv / "bin" / "python")
    # beside a clone (a folder named mlyard, the checkout's root): the installed package, not the clone
    (tmp_path / "mlyard").symlink_to(ROOT)
    imported = subprocess.run([python, "-c", "import mlyard, mlyard.infra, mlyard.warm; print(mlyard.infra.__file__);"
                               "print(callable(mlyard.train))"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              check=True).stdout.split()
    assert imported[0].startswith(str(venv)) and imported[1] == "True", imported  # the installed copy
    for name in ("tasks.py", "core.py", "flows/__init__.py", "flows/training.py", "serving/__init__.py"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(f"raise ImportError('the user\\'s own {name}, imported by mlyard')\n")
    (folder / "train.py").write_text(SCRIPT)
    (folder / "train.yaml").write_text("name: first\nexperiment: wheel\nsource_uri: .\nentry_point: train.py\n")
    (folder / "endpoint.yaml").write_text("name: first-ep\nstage:\n  resources: [{model: first@champion}]\n")
    try:
        first_up = mlyard("up")  # inside: an `up` that fails part-way has started processes that `down` ends
        mlflow_ui = re.search(r"MLflow UI: (\S+)", first_up).group(1)  # up leaves the UIs it prints running
        with urllib.request.urlopen(f"{mlflow_ui}/health", timeout=10) as answer:
            assert answer.status == 200
        trained = json.loads(mlyard("train", "-f", "train.yaml", "--json"))
        assert trained["metrics"] == {"r2": 1.0}, trained
        from_python = subprocess.run([python, "-c", "import mlyard; print(mlyard.train('train.yaml').metrics['r2'])"],
                                     cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        assert from_python.stdout.split()[-1:] == ["1.0"], from_python.stdout + from_python.stderr
        mlyard("models", "create", "first", "--from-training", trained["training_id"], "--alias", "champion")
        view = json.loads(mlyard("endpoints", "create", "-f", "endpoint.yaml", "--json"))
        assert view["status"] == "ACTIVE", view
        token = json.loads(mlyard("endpoints", "tokens", "issue", "first-ep", "--json"))["token"]
        request = urllib.request.Request(view["urls"]["default"]["first"], data=b'{"instances": [[3.0]]}', headers={
            "authorization": f"Bearer {token}", "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert json.load(answer)["predictions"] == [pytest.approx(7.0)]
        mlyard("endpoints", "delete", "first-ep")
        mlyard("down")
        # the owner signs in once per home: the Prefect UI's string is the same after a down and an up
        assert re.search(r"paste (\S+)", mlyard("up")).group(1) == re.search(r"paste (\S+)", first_up).group(1)
    finally:
        stopped = mlyard("down")
    assert "stopped prefect-server" in stopped and "stopped postgres" in stopped, stopped
    assert not link.is_symlink(), "the socket's link goes with the stack"
    left = subprocess.run(["pgrep", "-f", str(venv)], capture_output=True, text=True).stdout.split()
    assert not left or _gone(left), textwrap.shorten(str(left), 200)


def _gone(pids: list[str], seconds: float = 15) -> bool:
    """Every pid has exited within `seconds` (`down` signals, the processes then finish their exit)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.3)
    return False
