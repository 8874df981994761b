"""`mlyard admin ...`: the platform's own upkeep, for whoever runs it (not a team member's key)."""

from __future__ import annotations

import typer

from mlyard.cli.common import say_error, typer_app

app = typer_app("The platform's upkeep: migrate its databases after an upgrade.")


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
