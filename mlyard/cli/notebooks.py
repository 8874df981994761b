"""`mlyard notebooks ...`: JupyterLab notebooks (mlyard/notebooks.py): create, list, show, open, stop,
start, reboot, set-type, rename, delete. Each action is a flow run of the notebook deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mlyard.cli.common import JSON, SETS, ask, emit, guard, out, parse_sets, typer_app

app = typer_app("JupyterLab notebooks with boot and data storage: create, open, stop, start, reboot, delete.")
COLUMNS = ["name", "project", "owner", "status", "instance_type", "core_type", "data_storage_gb", "data_used_mb", "url", "description",
           "reason"]
WAIT = typer.Option(True, "--wait/--no-wait", help="Follow the action's flow run to its end (exit 1 when it fails); "
                    "--no-wait: print the run and return.")


def _api():
    import mlyard.notebooks as api

    return api


def _print(view: dict[str, Any]) -> None:
    if view.get("deleted"):
        out.print(f"notebook {view['name']} deleted (boot and data storage; a NAS share stays)", highlight=False)
        return
    out.print(f"[bold]{view['name']}[/bold]  {view['status']}  {view['description']}", highlight=False, soft_wrap=True)
    if view.get("reason"):
        out.print(f"reason: {view['reason']}", highlight=False, soft_wrap=True)
    out.print(f"instance type: {view['instance_type']} ({view['core_type']}, {view['cpus']} cores, "
              f"{view['memory_gb']} GB{', %d GPU' % view['gpus'] if view['gpus'] else ''})\n"
              f"storage: boot {view['boot_storage_gb']} GB (reset at every start), data {view['data_storage_gb']} GB "
              f"({view['data_used_mb']} MB used, kept)" + (f"\nNAS: {view['nas']['uri']} as ~/{view['nas']['mount_name']}"
                                                          if view.get("nas") else ""), highlight=False, soft_wrap=True)
    if view.get("data_dir"):
        out.print(f"data storage: {view['data_dir']}\nJupyter log: {view['log']}", highlight=False, soft_wrap=True)
    if view.get("url"):
        out.print(f"JupyterLab: {view['url']}  (with its token: mlyard notebooks open {view['name']})",
                  highlight=False, soft_wrap=True)
    if view.get("flow_run_id"):
        out.print(f"last action's flow run: {view['flow_run_id']}", highlight=False)


@app.command("create")
def notebooks_create(
    file: Path = typer.Option(..., "-f", "--file", help="Notebook spec (YAML): name, and optionally description, "
                              "instance_type, boot_storage_gb, data_storage_gb, nas; fields: core/specs/notebook.py."),
    sets: Optional[list[str]] = SETS, wait: bool = WAIT, as_json: bool = JSON,
) -> None:
    """Record a notebook and start it: storage, start-up scripts, JupyterLab (ACTIVE (HEALTHY) once it answers)."""
    view = guard(lambda: _api().create(file, sets=parse_sets(sets), wait=wait))
    emit(view, True) if as_json else _print(view)


@app.command("list")
def notebooks_list(as_json: bool = JSON) -> None:
    """Notebooks with their status (CREATE REQUESTED ... ACTIVE (HEALTHY), STOPPED, ... DELETE FAILED)."""
    emit(guard(lambda: ask("notebooks_list")), as_json, COLUMNS,
         empty="no notebooks yet: `mlyard notebooks create -f notebook.yaml`")


@app.command("show")
def notebooks_show(name: str, as_json: bool = JSON) -> None:
    """A notebook: status, instance type, storage and its use, where its files and logs are."""
    view = guard(lambda: ask("notebooks_show", name=name))
    if as_json:
        emit(view, True)
    else:
        _print(view)
        if view.get("start_up_log"):
            out.print("start-up scripts (cont-init.output):\n" + view["start_up_log"].rstrip(), highlight=False,
                      markup=False)


@app.command("open")
def notebooks_open(name: str, browser: bool = typer.Option(False, "--browser", help="Also open it in a browser.")) -> None:
    """Print the notebook's JupyterLab URL with its token (keep it to yourself: it is the way in)."""
    url = guard(lambda: _api().open_url(name))
    print(url)
    if browser:
        import webbrowser

        webbrowser.open(url)


def _action(name: str, action: str, wait: bool, as_json: bool) -> None:
    view = guard(lambda: getattr(_api(), action)(name, wait=wait))
    emit(view, True) if as_json else _print(view)


@app.command("stop")
def notebooks_stop(name: str, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Stop the notebook (STOPPED): its data storage stays; boot storage is made anew at the next start."""
    _action(name, "stop", wait, as_json)


@app.command("start")
def notebooks_start(name: str, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Start a stopped notebook: the start-up scripts run and the custom environments' kernels come back."""
    _action(name, "start", wait, as_json)


@app.command("reboot")
def notebooks_reboot(name: str, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Stop and start an ACTIVE notebook (when Jupyter is unhealthy or does not answer)."""
    _action(name, "reboot", wait, as_json)


@app.command("delete")
def notebooks_delete(name: str, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Delete the notebook with its boot and data storage (a NAS share is never deleted)."""
    _action(name, "delete", wait, as_json)


@app.command("set-type")
def notebooks_set_type(name: str, instance_type: str, as_json: bool = JSON) -> None:
    """Change a STOPPED notebook's instance type, within its core type (CPU or GPU); it applies at its next start."""
    view = guard(lambda: _api().set_type(name, instance_type))
    emit(view, True) if as_json else _print(view)


@app.command("rename")
def notebooks_rename(name: str, new_name: str, as_json: bool = JSON) -> None:
    """Rename a notebook (its storage, process and URL stay)."""
    view = guard(lambda: _api().rename(name, new_name))
    emit(view, True) if as_json else _print(view)


@app.command("types")
def notebooks_types(as_json: bool = JSON) -> None:
    """The instance types a notebook can have."""
    emit(_api().types(), as_json, ["name", "core_type", "cpus", "memory_gb", "gpus"])
