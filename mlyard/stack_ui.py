"""The stack's web UIs as `mlyard ui` opens them: the MLflow UI's server (MLflow's own, behind its basic
auth: mlyard/mlflow_ui.py) and what a person needs to sign in to it and to the Prefect UI, or to reach a
stack whose home was moved."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

from mlyard.core.connection import StackState, healthy, read_state
from mlyard.core.errors import StackError
from mlyard.core.links import mlflow_ui_port
from mlyard.core.settings import Settings
from mlyard.prefect_setup import spawn
from mlyard.stack_state import make_private, one_at_a_time, write_state
from mlyard.tasks.processes import alive


def _has_mlflow_app() -> bool:
    """mlyard's MLflow app plugin (mlyard/mlflow_ui.py) is installed: an install from before it
    (`make install` adds it) starts MLflow's own basic-auth app."""
    from importlib.metadata import entry_points

    return any(e.name == "mlyard" for e in entry_points(group="mlflow.app"))


def start_mlflow_ui(settings: Settings, echo=print, timeout: float = 180.0) -> str:
    with one_at_a_time(settings.home_dir):  # the stack's record is read and written whole: not beside a restart
        state = read_state(settings)
        if state is None:
            state = StackState(api_url="", ui_url="")
        port = mlflow_ui_port(settings, state)
        url = f"http://127.0.0.1:{port}"
        if state.pids.get("mlflow-ui") and alive(state.pids["mlflow-ui"]):
            return state.mlflow_ui_url or url
        if healthy(url):  # another stack's MLflow UI (or anything else): ours would not bind, theirs would answer
            raise StackError(f"something else already answers at {url}; stop it or set MLYARD_MLFLOW_UI_PORT")
        from mlyard import mlflow_ui

        # MLflow's job execution (a job runner and eight huey consumer processes, 15 CPU-seconds to start) runs
        # GenAI jobs (scorers, prompt optimization) that mlyard never submits; the UI's server goes without it.
        # Every request but its health probe signs in (MLflow's basic auth, the home's admin: mlyard/mlflow_ui.py).
        # the store's URL (with the embedded PostgreSQL's password) in its environment, never on its command line,
        # which every local account can read
        env = {**os.environ, **settings.engine_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               **mlflow_ui.auth_env(settings.home_dir), "MLYARD_HOME": str(settings.home_dir),  # members' keys: its catalog
               "MLFLOW_BACKEND_STORE_URI": settings.mlflow_uri}
        log = settings.home_dir / "logs" / "mlflow-ui.log"
        pid = spawn([str(Path(sys.executable).parent / "mlflow"), "ui", "--default-artifact-root", settings.mlflow_artifact_root.as_uri(),
                      "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                      "--app-name", "mlyard" if _has_mlflow_app() else "basic-auth"], log, env)
        state.pids["mlflow-ui"], state.logs["mlflow-ui"], state.mlflow_ui_url = pid, str(log), url
        write_state(settings, state)
        make_private(settings.home_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError as exc:
            if not alive(pid):
                raise StackError(f"the MLflow UI exited while starting; see {log}") from exc
            time.sleep(0.5)
    raise StackError(f"the MLflow UI did not answer at {url} within {timeout:.0f} s; see {log}")


def how_to_find(settings: Settings) -> str | None:
    """What a new shell in this folder needs to reach this stack, when its home is not the `.mlyard` it
    would find from here (MLYARD_HOME moved it): the line to export. None when nothing is needed."""
    from mlyard.core.home import DEFAULT_HOME, find_home

    if find_home(DEFAULT_HOME) == settings.home_dir:
        return None
    below = f" (or run mlyard from {settings.home_dir.parent} or below)" if settings.home_dir.name == DEFAULT_HOME else ""
    return f"this stack's home is {settings.home_dir}: in a new shell, `export MLYARD_HOME={settings.home_dir}`{below}"


def prefect_sign_in(settings: Settings) -> str:
    """What the Prefect UI's login page asks for, said to the stack's owner (the string is in stack.json,
    which only they read), or that it asks for nothing."""
    state = read_state(settings)
    if state is None or not state.prefect_auth_string:
        return "sign-in: none (MLYARD_PREFECT_AUTH=false: every account of this machine reaches this Prefect API)"
    return f"sign-in: paste {state.prefect_auth_string} into the login page (once per browser; `mlyard up --new-sign-in` changes it)"


def mlflow_sign_in(settings: Settings) -> str:
    """How the stack's owner signs in to the MLflow UI (mlyard/mlflow_ui.py: MLflow's basic auth)."""
    from mlyard import mlflow_ui

    return (f"sign-in: user {mlflow_ui.ADMIN}, password {mlflow_ui.admin_password(settings.home_dir)} "
            f"(kept in {settings.home_dir / mlflow_ui.CONFIG}, readable by you alone)")
