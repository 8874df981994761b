"""A newcomer's first hour, without detours: `mlyard up --help` names every port and setting it reads, two
parts of the stack on one port are refused before anything starts (naming both), and the Prefect UI's
sign-in string is the home's, kept from one `up` to the next (tests/test_wheel.py signs in across a
`down` and an `up` with it, and finds the MLflow UI that `up` printed answering)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import free_port

BIN = Path(sys.executable).parent


def _fresh(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", **settings}
    return subprocess.run([str(BIN / "mlyard"), "up"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_up_help_names_every_port_setting_and_what_listens_there():
    from mlyard.core.settings import Settings

    shown = subprocess.run([str(BIN / "mlyard"), "up", "--help"], capture_output=True, text=True, check=True,
                           env={**os.environ, "COLUMNS": "200"}).stdout
    ports = [f"MLYARD_{name.upper()}" for name in Settings.model_fields if name.endswith("_port")]
    assert len(ports) == 5 and all(p in shown for p in ports), (ports, shown)
    for setting in ("MLYARD_HOME", "MLYARD_DATABASE", "MLYARD_PREFECT_AUTH", "--new-sign-in"):
        assert setting in shown


def test_two_parts_on_one_port_are_refused_naming_both_before_anything_starts(tmp_path):
    first = free_port()
    done = _fresh(tmp_path, MLYARD_PREFECT_PORT=str(first), MLYARD_MLFLOW_UI_PORT=str(first + 3))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr + done.stdout
    assert "MLYARD_MLFLOW_UI_PORT" in lines[0] and "the MLflow UI" in lines[0] and "the front door" in lines[0]
    assert not (tmp_path / ".mlyard" / "stack.json").exists() and "starting" not in done.stdout


def test_the_sign_in_string_is_the_homes_kept_and_private_until_a_new_one_is_asked_for(tmp_path):
    from mlyard.stack_state import sign_in_string

    made = sign_in_string(tmp_path)
    assert made.startswith("mlyard:") and sign_in_string(tmp_path) == made
    assert stat.S_IMODE((tmp_path / "prefect-sign-in").stat().st_mode) == 0o600
    again = sign_in_string(tmp_path, new=True)
    assert again != made and sign_in_string(tmp_path) == again


def test_a_fresh_shell_opens_the_mlflow_ui_where_the_running_stack_keeps_it(tmp_path, monkeypatch):
    from mlyard.core.connection import StackState
    from mlyard.core.links import mlflow_ui_port
    from mlyard.core.settings import Settings

    monkeypatch.delenv("MLYARD_MLFLOW_UI_PORT", raising=False)
    state = StackState(api_url="", ui_url="", mlflow_ui_port=47123)
    assert mlflow_ui_port(Settings(home=tmp_path), state) == 47123  # not 5000: another stack's, maybe
    assert mlflow_ui_port(Settings(home=tmp_path), None) == 5000
    monkeypatch.setenv("MLYARD_MLFLOW_UI_PORT", "47200")  # this shell says one: it is taken
    assert mlflow_ui_port(Settings(home=tmp_path), state) == 47200
