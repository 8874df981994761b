"""The platform catalog: a database of long-lived resources MLflow does not know (SQLAlchemy 2 +
Alembic), its tables declared in registry/tables.py.

The schema is owned by the Alembic migrations in `registry/migrations`; opening a catalog upgrades it
to the newest revision under a lock (Alembic has none): on PostgreSQL an advisory lock held by a
connection of its own while Alembic migrates, on SQLite a lock file beside the database, so that two
processes opening an old catalog at once migrate it once. On a cluster the migration Job
(registry/migrate.py) does it before the pods start.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from mlyard.registry.tables import Endpoint, EndpointStage, StageResource

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "mlyard_alembic_version"  # Optuna keeps its own `alembic_version` in the same DB
# the advisory lock's key for the catalog's migrations: any fixed number no other lock of the database uses
MIGRATION_LOCK = 0x6D6C7961  # "mlya"
# The newest revision: migrations are numbered files whose revision is their number (one line of history).
HEAD = max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


class Catalog:
    """A catalog database, migrated to the newest revision on open."""

    def __init__(self, url: str, upgrade: bool = True):
        """`upgrade=False`: open as it is (registry/migrate.py then upgrades it and says what it did)."""
        self.url = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if upgrade and self.revision() != HEAD:  # alembic (a quarter second to import) only when there is work for it
            self.upgrade()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def revision(self) -> str | None:
        """The revision the database is at (None: not made yet)."""
        with self.engine.connect() as conn:
            return alembic_revision(conn)

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Migrate to `revision` (once, whoever else migrates at the same time); (before, after)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with migration_lock(self.engine, MIGRATION_LOCK), self.engine.begin() as conn:
            before = alembic_revision(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            return before, alembic_revision(conn)

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


def alembic_revision(conn, table: str = VERSION_TABLE) -> str | None:
    """The revision(s) an Alembic version table records (None: the schema is not made yet); MLflow's and
    Prefect's databases keep theirs in `alembic_version`."""
    if not inspect(conn).has_table(table):
        return None
    return ",".join(sorted(r[0] for r in conn.execute(text(f"SELECT version_num FROM {table}")))) or None


@contextmanager
def migration_lock(engine: Engine, key: int) -> Iterator[None]:
    """Held by one process at a time, per database: a PostgreSQL advisory lock `key` (on a connection of its
    own, so that the migration's transaction is Alembic's), or for a SQLite file an exclusive lock on
    `<database>.migrate.lock`. Alembic takes no lock: two processes upgrading at once would both migrate."""
    database = engine.url.database
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    import fcntl
    import os

    fd = os.open(f"{database}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
