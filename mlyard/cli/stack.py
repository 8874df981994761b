"""`mlyard up | down | status | ui | demo`: the embedded stack."""

from __future__ import annotations

import typer

from mlyard.cli.common import JSON, emit, err, guard, out, typer_app


def _settings():
    from mlyard.core.settings import Settings

    return Settings()


ui_app = typer_app("Open the web UIs of the embedded stack.")


def up(new_sign_in: bool = typer.Option(False, "--new-sign-in", help="Make a new string for the Prefect UI's "
                                         "login page (this home keeps one; the stack must be down).")) -> None:
    """Start the embedded stack: the Prefect server and UI, the local pool with a worker, the deployments, the
    mlyard API, the gateway, the front door and the MLflow UI, with their databases on SQLite (or, with
    MLYARD_DATABASE=postgres, on the embedded PostgreSQL, as production keeps them). Each part's port is a
    setting, refused before anything starts if two parts share one:

    MLYARD_PREFECT_PORT (default 4200): the Prefect UI and API; the next three follow it.

    MLYARD_API_PORT (Prefect's + 1): the mlyard API, which the CLI and the SDK call.

    MLYARD_GATEWAY_PORT (Prefect's + 2): the gateway, where endpoints answer.

    MLYARD_DOOR_PORT (Prefect's + 3): the front door, the Prefect UI for team members.

    MLYARD_MLFLOW_UI_PORT (default 5000): the MLflow UI.

    Also read: MLYARD_HOME (where the state lives: the nearest .mlyard from here up, else ./.mlyard),
    MLYARD_DATABASE (sqlite or postgres), MLYARD_PREFECT_AUTH (false: no sign-in), MLYARD_SANDBOX (how user code
    runs) and MLYARD_CLUSTER_POOLS (1: also the Kubernetes pools' deployments). Every setting: docs/reference/settings.md."""
    from mlyard import stack, stack_ui
    from mlyard.core.connection import read_state
    from mlyard.core.errors import StackError
    from mlyard.stack_state import sign_in_string
    from mlyard.tasks.processes import alive

    settings = _settings()

    def start():
        if new_sign_in:
            if (running := read_state(settings)) is not None and any(map(alive, running.pids.values())):
                raise StackError("the stack runs: `mlyard down` first, then `mlyard up --new-sign-in`")
            settings.home_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            sign_in_string(settings.home_dir, new=True)
        return stack.up(settings, echo=out.print)

    state = guard(start)
    out.print(f"Prefect UI: {state.ui_url}   (stop with `mlyard down`)")
    out.print(stack_ui.prefect_sign_in(settings), highlight=False)
    try:
        out.print(f"MLflow UI: {stack_ui.start_mlflow_ui(settings, out.print)}   {stack_ui.mlflow_sign_in(settings)}",
                  highlight=False)
    except StackError as exc:  # the stack runs; its MLflow UI alone could not start (`mlyard ui mlflow` again)
        err.print(f"the MLflow UI did not start: {exc}", highlight=False)
    if (where := stack_ui.how_to_find(settings)) is not None:
        out.print(where)


def down() -> None:
    """Stop everything `mlyard up` and `mlyard ui` started."""
    from mlyard import stack

    if not stack.down(_settings(), echo=out.print):
        out.print("nothing was running")


def _member() -> dict | None:
    """Who a project member is, and their UIs' URLs, from the platform (None: the stack's owner here)."""
    from mlyard.cli.common import ask

    return guard(lambda: ask("whoami")) if _settings().api_key is not None else None


def status(as_json: bool = JSON) -> None:
    """What runs, and the URLs of the Prefect UI and the MLflow UI (a member: who you are on the platform,
    your projects and roles, and your UIs)."""
    from mlyard import stack

    if (me := _member()) is not None:
        emit({"platform": _settings().api_url, **me}, as_json, title="mlyard")
        return
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

    if (me := _member()) is not None:  # the platform's MLflow UI: a member signs in with their key there
        if not me["urls"].get("mlflow_ui"):
            err.print("the platform's MLflow UI is not running: its owner starts it (`mlyard up`)")
            raise typer.Exit(2)
        out.print(f"MLflow UI: {me['urls']['mlflow_ui']}")
        out.print(f"sign-in: user {me['name']}, password: your API key (your projects' runs alone)")
        return
    settings = _settings()
    url = guard(lambda: stack_ui.start_mlflow_ui(settings))
    out.print(f"MLflow UI: {url}")
    out.print(stack_ui.mlflow_sign_in(settings))


@ui_app.command("prefect")
def ui_prefect() -> None:
    """Print the Prefect UI URL (the server runs after `mlyard up`) and the string its login page asks for, and
    the front door where project members sign in with their API key (their projects' runs alone)."""
    from mlyard import stack, stack_ui

    if (me := _member()) is not None:  # the front door: the Prefect UI of their projects' runs
        out.print(f"Prefect UI (your projects' runs): {me['urls']['prefect_ui']}")
        out.print("sign-in: your API key (`mlyard login` kept it; `mlyard users add-key` makes another)")
        return
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
