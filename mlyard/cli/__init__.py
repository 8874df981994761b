"""The `mlyard` command line: a thin front door over mlyard.api, flows/ and registry/, one module
per command group. Every listing prints a table for people and JSON with --json for scripts. An error
is one line that says what was wrong and what to do (--debug: the traceback), with exit code 2 (bad
input, a broken rule, no platform) or 1 (a run failed or was stopped).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

import typer

from mlyard.cli import (
    admin,
    batches,
    dashboard,
    endpoints,
    evaluations,
    experiments,
    images,
    k8s,
    logs,
    models,
    notebooks,
    pipelines,
    predict,
    rags,
    schedules,
    serve,
    servers,
    stack,
    teams,
    templates,
    trainings,
    tunings,
)
from mlyard.cli.common import DEBUG

app = typer.Typer(help="mlyard: ML lifecycle flows on Prefect 3 with MLflow as the registry.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (and a failed run's in "
                                                         "its log)."),
         project: str = typer.Option(None, "--project", help="The project this command acts in (else "
                                     "MLYARD_PROJECT, your only project, or `default` for an admin).")) -> None:
    DEBUG["on"] = debug
    from mlyard.core.environment import apply_login

    if project:
        os.environ["MLYARD_PROJECT"] = project  # read by Settings, here and in what this command starts
    apply_login()  # `mlyard login`'s key and address, where the environment does not say them
    from mlyard import submit

    submit.CONSOLE_TRACEBACKS["on"] = debug  # the error line says why; the Prefect UI's log keeps the tracebacks


for command in (stack.up, stack.down, stack.status, trainings.train, tunings.tune, batches.batch,
                evaluations.evaluate, serve.serve, predict.predict, stack.demo, dashboard.dashboard, logs.logs,
                teams.audit, teams.login, teams.logout, teams.whoami):
    app.command(command.__name__)(command)
for group, name in ((trainings.app, "trainings"), (tunings.app, "tunings"), (batches.app, "batches"),
                    (evaluations.app, "evaluations"), (experiments.app, "experiments"), (templates.app, "templates"),
                    (models.app, "models"), (endpoints.app, "endpoints"), (servers.app, "servers"),
                    (schedules.app, "schedules"), (pipelines.app, "pipelines"),
                    (pipelines.runs_app, "pipeline-runs"), (rags.app, "rags"), (notebooks.app, "notebooks"),
                    (stack.ui_app, "ui"), (k8s.app, "k8s"),
                    (images.app, "images"), (images.accounts_app, "registry-accounts"),
                    (teams.users_app, "users"), (teams.projects_app, "projects"), (admin.app, "admin")):
    app.add_typer(group, name=name)
app.add_typer(rags.app, name="rag", hidden=True)  # `mlyard rag search ...` as the issue first spelled it



def main() -> None:
    """The `mlyard` command: the app, then an exit that skips the interpreter's teardown.

    A command that ran a flow here holds Prefect, MLflow, scikit-learn and their thousands of modules;
    tearing them down (module by module, then the garbage collector) took 1.5-2.5 s after the work was
    done and printed. The exit handlers still run (Prefect ships its last logs and events, logging
    flushes), and so do the standard streams; only the teardown is skipped. While a thread that Python
    would wait for still runs, the exit is the normal one."""
    code: int = 0
    try:
        app()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


__all__ = ["app", "main"]
