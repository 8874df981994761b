"""The platform catalog: a database of long-lived resources MLflow does not know (SQLAlchemy 2 +
Alembic), its tables declared in registry/tables.py.

The schema is owned by the Alembic migrations in `registry/migrations`; opening a catalog
upgrades it to the newest revision.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from registry.tables import Endpoint, EndpointStage, StageResource

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "mlyard_alembic_version"  # Optuna keeps its own `alembic_version` in the same DB
# The newest revision: migrations are numbered files whose revision is their number (one line of history).
HEAD = max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


class Catalog:
    """A catalog database, migrated to the newest revision on open."""

    def __init__(self, url: str):
        self.url = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if self.revision() != HEAD:  # alembic (a quarter second to import) only when there is work for it
            self.upgrade()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def revision(self) -> str | None:
        """The revision the database is at (None: not made yet)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE):
                return None
            return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back (nothing half-made) on error."""
        with self._sessions() as s, s.begin():
            yield s

    def endpoints_serving(self, model_name: str, version: str | None = None) -> list[str]:
        """Names of endpoints (as `endpoint/stage`) whose stages serve the model (or that version)."""
        with self.session() as s:
            q = s.query(StageResource).join(EndpointStage).join(Endpoint).filter(StageResource.model_name == model_name)
            if version is not None:
                q = q.filter(StageResource.model_version == str(version))
            return sorted({f"{r.stage.endpoint.name}/{r.stage.name}" for r in q})

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
