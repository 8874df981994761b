"""`mlyard up | down | status | ui | demo`: the embedded stack."""

from __future__ import annotations

import typer

from mlyard.cli.common import JSON, emit, err, guard, out, typer_app


def _settings():
    from mlyard.core.settings import Settings

    return Settings()


ui_app = typer_app("Open the web UIs of the embedded stack.")


def up() -> None:
    """Start the embedded stack: Prefect server, the local pool with a worker, the deployments (databases on
    SQLite, or with MLYARD_DATABASE=postgres on the embedded PostgreSQL, as production's)."""
    from mlyard import stack, stack_ui

    settings = _settings()
    state = guard(lambda: stack.up(settings, echo=out.print))
    out.print(f"Prefect UI: {state.ui_url}   (stop with `mlyard down`)")
    if (where := stack_ui.how_to_find(settings)) is not None:
        out.print(where)


def down() -> None:
    """Stop everything `mlyard up` and `mlyard ui` started."""
    from mlyard import stack

    if not stack.down(_settings(), echo=out.print):
        out.print("nothing was running")


def status(as_json: bool = JSON) -> None:
    """What runs, and the URLs of the Prefect UI and the MLflow UI."""
    from mlyard import stack

    info = stack.status(_settings())
    if as_json:
        emit(info, True)
        return
    procs = info.pop("processes")
    emit(info, False, title="mlyard")
    if procs:
        emit([{"process": n, **p} for n, p in procs.items()], False, ["process", "pid", "alive", "log"])


@ui_app.command("mlflow")
def ui_mlflow() -> None:
    """Start the MLflow UI on the embedded tracking store and print its URL and how to sign in (MLflow's
    basic auth: the user `mlyard` and this home's password)."""
    from mlyard import stack_ui

    settings = _settings()
    url = guard(lambda: stack_ui.start_mlflow_ui(settings))
    out.print(f"MLflow UI: {url}")
    out.print(stack_ui.mlflow_sign_in(settings))


@ui_app.command("prefect")
def ui_prefect() -> None:
    """Print the Prefect UI URL (the server runs after `mlyard up`) and the string its login page asks for, and
    the front door where project members sign in with their API key (their projects' runs alone)."""
    from mlyard import stack, stack_ui

    settings = _settings()
    info = stack.status(settings)
    if not info["running"]:
        err.print("the embedded stack is not running: start it with `mlyard up`")
        raise typer.Exit(2)
    out.print(f"Prefect UI: {info['prefect_ui']}")
    out.print(stack_ui.prefect_sign_in(settings))
    if info.get("prefect_ui_for_members"):
        out.print(f"for project members: {info['prefect_ui_for_members']}")


def demo(keep_running: bool = typer.Option(True, help="Leave the stack running to look at the UIs.")) -> None:
    """Start the stack, train, tune, register, batch-predict and evaluate the example; say where to look."""
    from mlyard import demo as demo_mod

    guard(lambda: demo_mod.run(_settings(), out, keep_running))
