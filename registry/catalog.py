"""The platform catalog: a database of long-lived resources MLflow does not know (SQLAlchemy 2 +
Alembic), its tables declared in registry/tables.py.

The schema is owned by the Alembic migrations in `registry/migrations`, and only the migration migrates it:
the migration Job on a cluster (registry/migrate.py, run by `mlyard k8s apply` before any pod rolls),
`mlyard admin migrate`, and `mlyard up` on one machine. Every other process opens the catalog as it is and
runs only on a schema it knows (`check`): its own revision, or a newer one whose migrations were all
expand-only from it (each migration says so: `COMPATIBLE_FROM`, below), so that release N-1's pods keep
working while release N rolls out. Any other schema is refused in one line naming both revisions
(SchemaMismatch), before anything is read or written. A SQLite catalog with no schema (one machine's new
home) is made.

Migrations run under a lock (Alembic has none): on PostgreSQL an advisory lock held by a connection of its
own, on SQLite a lock file beside the database, so that two migrations at once migrate once. Each one leaves
the stamp `mlyard_schema`: the revision, the oldest revision whose code still runs on it, and the release
that migrated it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import Column, MetaData, String, Table, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from mlyard.core.errors import SchemaMismatch
from mlyard.core.names import RELEASE
from mlyard.registry.tables import Endpoint, EndpointStage, StageResource

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "mlyard_alembic_version"  # Optuna keeps its own `alembic_version` in the same DB
# the advisory lock's key for the catalog's migrations: any fixed number no other lock of the database uses
MIGRATION_LOCK = 0x6D6C7961  # "mlya"
# The newest revision: migrations are numbered files whose revision is their number (one line of history).
HEAD = max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))
# The stamp a migration leaves (a table of one row beside Alembic's version table, which an older release can
# read without knowing the newer migrations): what an older release needs to know whether it may run on it.
STAMP = Table("mlyard_schema", MetaData(), Column("revision", String(32), primary_key=True),
              Column("compatible_from", String(32), nullable=False), Column("release", String(64), nullable=False),
              Column("migrated_at", String(40), nullable=False))


def compatible_from(revision: str) -> str:
    """The oldest revision whose code still runs on `revision`'s schema. A migration that only adds (tables,
    nullable columns, indexes) says `COMPATIBLE_FROM = "<the revision before it>"`: whatever ran on that one
    runs on it. One that drops, renames or tightens what older code reads says nothing (it is its own floor),
    and ships one release after the code stopped reading it (expand, then contract)."""
    for path in (MIGRATIONS / "versions").glob(f"{revision}_*.py"):
        found = re.search(r'^COMPATIBLE_FROM = "(\d+)"', path.read_text(), re.M)
        if found and int(found.group(1)) < int(revision):
            return compatible_from(found.group(1))
    return revision


# A process holds at most CONNECTIONS to a catalog on a database server (MLYARD_CATALOG_CONNECTIONS: a cluster
# sets each part's share, tasks/cluster_connections.py), half of them opened only under load, each checked before
# use and renewed every half hour (a managed PostgreSQL's 100 connections are shared by every replica and run pod).
CONNECTIONS = 8
POOL = {"pool_pre_ping": True, "pool_recycle": 1800}


def pool() -> dict:
    from mlyard.core.environment import catalog_connections

    most = catalog_connections(CONNECTIONS)
    return {**POOL, "pool_size": (most + 1) // 2, "max_overflow": most // 2}


_SHARED: dict[tuple[str, int], "Catalog"] = {}


def shared(url: str) -> "Catalog":
    """This process's one Catalog of `url` (its engine and connection pool), made at the first call: what the
    front door's modules use, so that no request builds an engine of its own. A forked child makes its own."""
    import os

    key = (url, os.getpid())
    if key not in _SHARED:
        _SHARED[key] = Catalog(url)
    return _SHARED[key]


class Catalog:
    """A catalog database, checked on open: a schema this release runs on, or SchemaMismatch."""

    def __init__(self, url: str, upgrade: bool | None = None):
        """`upgrade=None`: `check` it (every process but a migration's; a SQLite catalog with no schema yet is
        made). True: migrate it to HEAD (the migration, `mlyard up`). False: open as it is (registry/migrate.py
        then upgrades it and says what it did)."""
        self.url = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        server = parsed.get_backend_name() != "sqlite"  # a database server: its connections are bounded (POOL)
        self.engine: Engine = create_engine(url, **(pool() if server else {}))
        if not server:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if upgrade and self.revision() != HEAD:  # alembic (a quarter second to import) only when there is work for it
            self.upgrade()
        elif upgrade is None:
            try:
                self.check()
            except SchemaMismatch:
                self.engine.dispose()  # refused: nothing of it is kept open
                raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def check(self) -> None:
        """Refuse (SchemaMismatch, one line naming both revisions) a schema this release does not run on:
        one older than HEAD, an empty one, or a newer one whose stamp says it needs a newer release."""
        with self.engine.connect() as conn:
            found = alembic_revision(conn)
            stamp = schema_stamp(conn)
        if found == HEAD:
            return
        if found is None and self.engine.dialect.name == "sqlite":  # one machine's new home: nothing runs on it yet
            self.upgrade()
            return
        where = make_url(self.url).render_as_string(hide_password=True)
        fix = ("migrate it first: `mlyard admin migrate` (on a cluster `mlyard k8s apply` runs the migration "
               "Job; on one machine `mlyard up` migrates)")
        if found is None:
            raise SchemaMismatch(f"the catalog at {where} has no schema yet, and this mlyard ({RELEASE}) "
                                 f"runs on schema {HEAD}: {fix}")
        if int(found) < int(HEAD):
            raise SchemaMismatch(f"the catalog at {where} is at schema {found}, older than this mlyard's "
                                 f"({RELEASE}) schema {HEAD}: {fix}")
        if stamp is None or int(stamp["compatible_from"]) > int(HEAD):
            needs = f"{stamp['compatible_from']} or newer (release {stamp['release']} migrated it)" if stamp else "newer"
            raise SchemaMismatch(f"the catalog at {where} is at schema {found}, which runs code of schema {needs}; "
                                 f"this mlyard ({RELEASE}) is at schema {HEAD}: run the platform's release "
                                 "(its images, or `pip install` of it)")

    def revision(self) -> str | None:
        """The revision the database is at (None: not made yet)."""
        with self.engine.connect() as conn:
            return alembic_revision(conn)

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Migrate to `revision` (once, whoever else migrates at the same time); (before, after). A schema
        newer than this release's (a rollback's migration Job, after the next release migrated) is left as it
        is when this release runs on it, and refused (SchemaMismatch, `check`'s line) when it does not."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with migration_lock(self.engine, MIGRATION_LOCK), self.engine.begin() as conn:
            before = alembic_revision(conn)
            if before is not None and before.isdigit() and int(before) > int(HEAD):
                self.check()
                return before, before
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            after = alembic_revision(conn)
            if after is not None:
                _stamp(conn, after)
            return before, after

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


def schema_stamp(conn: Connection) -> dict[str, str] | None:
    """The stamp the last migration left (None: none yet, or a catalog migrated before stamps)."""
    if not inspect(conn).has_table(STAMP.name):
        return None
    row = conn.execute(STAMP.select()).mappings().first()
    return dict(row) if row else None


def _stamp(conn: Connection, revision: str) -> None:
    STAMP.create(conn, checkfirst=True)
    conn.execute(STAMP.delete())
    conn.execute(STAMP.insert().values(revision=revision, compatible_from=compatible_from(revision),
                                       release=RELEASE, migrated_at=datetime.now(timezone.utc).isoformat()))


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
