"""`mlyard admin ...`: the platform's own upkeep, for whoever runs it (not a team member's key)."""

from __future__ import annotations

from pathlib import Path

import typer

from mlyard.cli.common import JSON, emit, guard, out, say_error, typer_app

app = typer_app("The platform's upkeep: migrate its databases after an upgrade; back it up and restore it.")


def _platforms_own() -> None:
    from mlyard.core.settings import Settings

    if Settings().api_key is not None:
        say_error("error: `mlyard admin` acts on the platform's databases: run it where the platform runs (its "
                  "owner's shell, or the install's migration Job), not with a team member's key")
        raise typer.Exit(2)


@app.command("migrate")
def migrate() -> None:
    """Migrate the catalog (and MLflow's and Prefect's databases where their URLs are set, as the cluster's
    migration Job does) to this release's schema, once, under each database's lock. Only a migration migrates:
    every other process refuses a schema it does not run on, naming both revisions."""
    from mlyard.registry.migrate import main

    _platforms_own()
    raise typer.Exit(main())


def _inventory_lines(inventory: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{store}: " + ", ".join(f"{n} {t}" for t, n in tables.items() if n)
                     for store, tables in inventory.items())


def _said(step, as_json: bool, lines) -> None:
    """Run `step(echo)` (a backup's or restore's), then print its manifest as JSON or `lines(manifest)`."""
    manifest = guard(lambda: step((lambda _: None) if as_json else out.print))
    if as_json:
        emit(manifest, True)
        return
    for line in lines(manifest):
        out.print(line)


@app.command("backup")
def backup(dest: Path = typer.Argument(..., help="A new (or empty) folder for the backup; private to you."),
           as_json: bool = JSON) -> None:
    """Back up this machine's running platform: its SQLite databases (copied consistently while it runs), the
    embedded PostgreSQL's databases (pg_dump), and the home's files (artifacts, outputs, notebooks, secrets),
    with an inventory of what it holds. Nothing is stopped."""
    from mlyard import backup as backups
    from mlyard.cli.common import connected

    _platforms_own()
    _said(lambda echo: backups.backup(connected(), dest, echo=echo), as_json, lambda m: [
        f"backed up {m['home']} into {dest} in {m['seconds']} s (release {m['release']}, catalog schema "
        f"{m['catalog_schema']})", f"it holds: {_inventory_lines(m['inventory'])}"])


@app.command("restore")
def restore(source: Path = typer.Argument(..., help="A folder `mlyard admin backup` made."), as_json: bool = JSON) -> None:
    """Restore a backup into the home it was taken from (absent or empty, its stack stopped); then `mlyard up`
    starts the platform as it was: endpoints answer their old tokens, schedules catch up from the backup's time."""
    from mlyard import backup as backups
    from mlyard.core.settings import Settings

    _platforms_own()
    _said(lambda echo: backups.restore(Settings(), source, echo=echo), as_json, lambda m: [
        f"restored {m['home']} as it was at {m['taken_at']} (release {m['release']}): start it with `mlyard up`"])


@app.command("inventory")
def inventory(as_json: bool = JSON) -> None:
    """What this machine's platform holds, counted (as a backup's manifest records it): the catalog's tables,
    MLflow's runs and model versions, Prefect's flow runs and deployments."""
    from mlyard import backup as backups
    from mlyard.cli.common import connected

    _platforms_own()
    found = guard(lambda: backups.inventory(connected()))
    if as_json:
        emit(found, True)
        return
    emit([{"store": store, "table": t, "rows": n} for store, tables in found.items() for t, n in tables.items()],
         False, ["store", "table", "rows"])
