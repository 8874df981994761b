"""The platform's schemas, migrated once per install or upgrade: `python -m mlyard.registry.migrate` is the command of
the migration Job (infra/k8s/base/migrate.yaml) that `mlyard k8s apply` runs and waits for.

1. The catalog: its Alembic migrations (registry/migrations), to the newest revision.
2. MLflow's tracking database: `mlflow db upgrade` (MLflow's server never migrates an existing database and
   refuses to start on an old one), when MLFLOW_BACKEND_STORE_URI names one.
3. Prefect's database: `prefect server database upgrade` (the cluster's Prefect server starts with its own
   migration off, so that no two replicas race), when PREFECT_SERVER_DATABASE_CONNECTION_URL names one.

Each runs under its database's migration lock (registry/catalog.py `migration_lock`), so a second Job, or a
pod opening the catalog at the same moment, waits and then finds nothing to do. Each prints one line:
what it found and what it did. A failure exits non-zero with the step and the reason (the Job then fails,
and `mlyard k8s apply` says so).
"""

from __future__ import annotations

import sys
from typing import Callable

from sqlalchemy import create_engine

from mlyard.core.environment import migration_databases
from mlyard.registry.catalog import Catalog, alembic_revision, migration_lock

# advisory lock keys, one per engine's database (each database has its own locks; distinct all the same)
MLFLOW_LOCK = 0x6D6C6631  # "mlf1"
PREFECT_LOCK = 0x70726631  # "prf1"


def sync_url(url: str) -> str:
    """A synchronous driver's URL for the same database (Prefect's URLs name asyncpg or aiosqlite)."""
    return url.replace("+asyncpg", "+psycopg").replace("+aiosqlite", "").replace("postgresql://", "postgresql+psycopg://")


def _locked(url: str, key: int, upgrade: Callable[[], None]) -> tuple[str | None, str | None]:
    engine = create_engine(sync_url(url))
    try:
        with migration_lock(engine, key):
            with engine.connect() as conn:
                before = alembic_revision(conn, "alembic_version")
            upgrade()
            with engine.connect() as conn:
                return before, alembic_revision(conn, "alembic_version")
    finally:
        engine.dispose()


def _said(name: str, before: str | None, after: str | None) -> str:
    if before == after:
        return f"{name}: at {after} already, nothing to do"
    return f"{name}: migrated from {before or 'an empty database'} to {after}"


def migrate_catalog(url: str) -> str:
    from mlyard.registry.catalog import HEAD

    catalog = Catalog(url, upgrade=False)
    try:
        before, after = catalog.upgrade()
    finally:
        catalog.dispose()
    if after and after.isdigit() and int(after) > int(HEAD):  # a rollback to this release: the schema stays
        return f"catalog: at {after}, newer than this release's {HEAD}, which runs on it: nothing to do"
    return _said("catalog", before, after)


def migrate_mlflow(url: str) -> str:
    from mlflow.db import upgrade

    return _said("mlflow", *_locked(url, MLFLOW_LOCK, lambda: upgrade.main([url], standalone_mode=False)))


def migrate_prefect(url: str) -> str:
    import subprocess

    def upgrade() -> None:  # Prefect's own command, reading the same URL from the same environment variable
        out = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")

    return _said("prefect", *_locked(url, PREFECT_LOCK, upgrade))


def main() -> int:
    from mlyard.core.settings import Settings

    catalog, mlflow, prefect = Settings().catalog_db_url, *migration_databases()
    steps = [("catalog", lambda: migrate_catalog(catalog))]
    if mlflow:
        steps.append(("mlflow", lambda: migrate_mlflow(mlflow)))
    if prefect:
        steps.append(("prefect", lambda: migrate_prefect(prefect)))
    for name, step in steps:
        try:
            print(step(), flush=True)
        except Exception as exc:  # noqa: BLE001 - one line for the Job's log, then a failed Job
            print(f"{name}: migration failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
