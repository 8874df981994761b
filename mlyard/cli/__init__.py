"""The `mlyard` command line: a thin front door over mlyard.api, flows/ and registry/, one module
per command group. Every listing prints a table for people and JSON with --json for scripts. An error
is one line that says what was wrong and what to do (--debug: the traceback), with exit code 2 (bad
input, a broken rule, no platform) or 1 (a run failed or was stopped).
"""

from __future__ import annotations

import typer

from mlyard.cli import batches, evaluations, experiments, models, stack, templates, trainings, tunings
from mlyard.cli.common import DEBUG

app = typer.Typer(help="mlyard: ML lifecycle flows on Prefect 3 with MLflow as the registry.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error.")) -> None:
    DEBUG["on"] = debug


for command in (stack.up, stack.down, stack.status, trainings.train, tunings.tune, batches.batch,
                evaluations.evaluate, stack.demo):
    app.command(command.__name__)(command)
for group, name in ((trainings.app, "trainings"), (tunings.app, "tunings"), (batches.app, "batches"),
                    (evaluations.app, "evaluations"), (experiments.app, "experiments"), (templates.app, "templates"),
                    (models.app, "models"), (stack.ui_app, "ui")):
    app.add_typer(group, name=name)

__all__ = ["app"]
