"""One machine's platform backed up and restored: `mlyard admin backup DIR` and `mlyard admin restore DIR`.

A backup is a folder that only its owner can read. It holds the home's secrets: the PostgreSQL password, the
Prefect sign-in, MLflow's users, registry accounts' Secrets and the API keys' digests.

    manifest.json        the release, the catalog's schema, the home it was taken from, when, and the
                         inventory (the rows of what it holds, counted: projects, keys, runs, model versions,
                         endpoints and their tokens, schedules, ...)
    databases/NAME.db    each SQLite database of the home (the catalog, MLflow's, its users', Prefect's), copied
                         by SQLite's online backup: consistent while the stack writes
    databases/NAME.dump  each database of the embedded PostgreSQL (RAG's vectors; with `database: postgres`
                         Prefect's, MLflow's and the catalog's too), by its own pg_dump
    home.tar             every other file of the home (MLflow's artifacts, runs' and pipelines' outputs,
                         notebooks' folders, endpoints' wanted replicas, RAGs' files, the secrets), less what a
                         running stack makes again: logs, caches, locks, its record, the replicas' state

It is taken while the stack runs (it starts nothing and stops nothing). A restore needs the stack stopped and the
home absent or empty, and puts the home back where it was taken: MLflow's artifact locations and the replicas'
files are absolute paths. It makes the SQLite databases and the files again, starts the embedded PostgreSQL
alone to restore each of its databases into it, and stops it. `mlyard up` then starts the platform as it was:
the catalog is migrated if the backup was made by an older release, endpoints' replicas start from their wanted
files and answer their old tokens, and schedules catch up from the time of the backup.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tarfile
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mlyard.core.errors import SpecError, StackError
from mlyard.core.names import RELEASE
from mlyard.core.settings import Settings
from mlyard.tasks.dumps import count_tables, pg_client

MANIFEST = "manifest.json"
# what a running stack makes again, or keeps elsewhere (the PostgreSQL data folder: dumped instead)
SKIPPED_DIRS = {"postgres", "logs", "warm", "envs", "runs", "uploading", "endpoints/replicas/state",
                "endpoints/replicas/logs", "endpoints/replicas/run"}  # folders of the home, from its top
SKIPPED_SUFFIXES = (".lock", ".alive", ".db", ".db-wal", ".db-shm", ".db-journal", ".sock")
SKIPPED_FILES = {"stack.json"}


def backup(settings: Settings, dest: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Back up the running stack of `settings`' home into `dest` (a new folder); its manifest."""
    from mlyard.core.connection import read_state
    from mlyard.tasks.processes import alive

    home = settings.home_dir.resolve()
    state = read_state(settings)
    if state is None or not alive(state.pids.get("prefect-server")):
        raise StackError(f"no stack runs for {home}: a backup is taken from the running platform (`mlyard up`)")
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise SpecError("DIR", str(dest), "a new or empty folder for the backup")
    if dest == home or home in dest.parents:
        raise SpecError("DIR", str(dest), f"a folder outside the home it backs up ({home})")
    try:
        return _backup(settings, home, dest, echo)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # nothing half-made is left for a restore to trust
        raise


def _backup(settings: Settings, home: Path, dest: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    (dest / "databases").mkdir(parents=True, mode=0o700)
    os.chmod(dest, 0o700)
    started = time.monotonic()
    taken = datetime.now(timezone.utc).isoformat()
    for db in sorted(_sqlite_files(home)):
        name = str(db.relative_to(home)).replace("/", "__")
        _copy_sqlite(db, dest / "databases" / name)
        echo(f"  {db.relative_to(home)}: copied")
    counted = {}
    for name in _pg_databases(settings):
        counted.update(_dump(settings, name, dest / "databases" / f"{name}.dump"))
        echo(f"  PostgreSQL database {name}: dumped")
    with tarfile.open(dest / "home.tar", "w") as tar:
        for path in _home_files(home):
            tar.add(path, arcname=str(path.relative_to(home)), recursive=False)
    echo(f"  the home's files: {sum(1 for _ in _home_files(home))}")
    manifest = {"release": RELEASE, "catalog_schema": _catalog_revision(settings), "home": str(home),
                "database": settings.embedded_database, "taken_at": taken,
                "inventory": {**inventory(settings, _copies(settings, home, dest / "databases"), skip=set(counted)),
                              **counted},
                "seconds": round(time.monotonic() - started, 1)}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for path in dest.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    return manifest


def restore(settings: Settings, source: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Restore the backup `source` into `settings`' home (absent or empty, its stack stopped); its manifest."""
    source = source.resolve()
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SpecError("DIR", str(source), f"a backup made by `mlyard admin backup` (its {MANIFEST}: {exc})") from None
    home = settings.home_dir.resolve()
    if manifest["home"] != str(home):
        raise SpecError("MLYARD_HOME", str(home), f"the home the backup was taken from, {manifest['home']} (MLflow's "
                        "artifact locations and the replicas' files name it): restore there")
    if home.exists() and any(home.iterdir()):
        raise SpecError("MLYARD_HOME", str(home), "an absent or empty home: `mlyard down`, then move it aside "
                        f"(`mv {home} {home}.old`) and restore again")
    if tuple(map(int, manifest["release"].split("."))) > tuple(map(int, RELEASE.split("."))):
        raise SpecError("DIR", str(source), f"a backup of release {RELEASE} or older (it was made by "
                        f"{manifest['release']}): restore it with that release")
    home.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        _restore(settings, home, source, echo)
    except BaseException:
        for entry in home.iterdir():  # the home as it was: empty (a stack never starts on half of one)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        raise
    return manifest


def _restore(settings: Settings, home: Path, source: Path, echo: Callable[[str], None]) -> None:
    with tarfile.open(source / "home.tar") as tar:
        tar.extractall(home, filter="tar")
    echo("  the home's files: restored")
    dumps = []
    for db in sorted((source / "databases").iterdir()):
        if db.suffix == ".db":
            target = home / db.name.replace("__", "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _copy_sqlite(db, target)
            except sqlite3.DatabaseError as exc:
                raise SpecError("DIR", str(db), f"a SQLite database `mlyard admin backup` copied ({exc})") from None
            echo(f"  {target.relative_to(home)}: restored")
        elif db.suffix == ".dump":
            dumps.append(db)
    if dumps:
        _restore_postgres(settings, dumps, echo)
    from mlyard.stack_state import make_private

    make_private(home)


def _store_urls(settings: Settings) -> dict[str, str]:
    from mlyard.registry.migrate import sync_url

    prefect = settings.prefect_database_url or f"sqlite:///{settings.prefect_home / 'prefect.db'}"
    return {"catalog": settings.catalog_db_url, "mlflow": settings.mlflow_uri, "prefect": sync_url(prefect)}


def _copies(settings: Settings, home: Path, folder: Path) -> dict[str, str]:
    """The backup's own copies of the stores that are SQLite files of the home: what a backup counts, so that a
    write after the copy is neither counted nor lost (a PostgreSQL store is counted live: pg_dump's snapshot
    is its own)."""
    from sqlalchemy.engine import make_url

    found = {}
    for store, url in _store_urls(settings).items():
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and Path(parsed.database).is_relative_to(home):
            copy = folder / str(Path(parsed.database).relative_to(home)).replace("/", "__")
            if copy.is_file():
                found[store] = f"sqlite:///{copy}"
    return found


def inventory(settings: Settings, urls: dict[str, str] | None = None,
              skip: frozenset[str] | set[str] = frozenset()) -> dict[str, dict[str, int]]:
    """What the platform holds, counted: each catalog table's rows, MLflow's and Prefect's main tables (of the
    stores `urls` names instead, a backup's copies; none of those in `skip`)."""
    from sqlalchemy import create_engine

    found: dict[str, dict[str, int]] = {}
    for store, url in {**_store_urls(settings), **(urls or {})}.items():
        if store in skip:
            continue
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                found[store] = count_tables(conn, store)
        finally:
            engine.dispose()
    return found


def _dump(settings: Settings, name: str, path: Path) -> dict[str, dict[str, int]]:
    """pg_dump of a database of the embedded PostgreSQL, and, for a store's, its inventory counted in the very
    snapshot the dump took (exported by a repeatable-read transaction held open while pg_dump runs): what a
    restore brings back, and not a row that a running stack wrote meanwhile."""
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.embedded_postgres_url(name), isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as conn:
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar()
            pg_client("pg_dump", ["--format=custom", "--no-owner", f"--file={path}", f"--snapshot={snapshot}",
                                      f"--dbname={_pg_url(settings, name)}"])
            return {name: count_tables(conn, name)} if name in ("catalog", "mlflow", "prefect") else {}
    finally:
        engine.dispose()


def _sqlite_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*.db") if p.is_file() and not _skipped_dir(p.relative_to(home))]


def _skipped_dir(relative: Path) -> bool:
    text = relative.as_posix()
    return any(text == d or text.startswith(f"{d}/") for d in SKIPPED_DIRS)


def _home_files(home: Path):
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home)
        if _skipped_dir(relative) or (path.is_dir() and not path.is_symlink()):
            continue
        if path.name in SKIPPED_FILES or path.name.endswith(SKIPPED_SUFFIXES) or path.is_socket():
            continue
        yield path


def _copy_sqlite(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy while other connections write (WAL or not)."""
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)) as src, \
            closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    os.chmod(target, 0o600)


def _catalog_revision(settings: Settings) -> str | None:
    from mlyard.registry.catalog import Catalog

    catalog = Catalog(settings.catalog_db_url, upgrade=False)
    try:
        return catalog.revision()
    finally:
        catalog.dispose()


def _pg_url(settings: Settings, database: str) -> str:
    return settings.embedded_postgres_url(database).replace("postgresql+psycopg://", "postgresql://")


def _pg_databases(settings: Settings) -> list[str]:
    import psycopg

    if not (settings.pgdata_dir / "PG_VERSION").exists():
        return []
    with psycopg.connect(_pg_url(settings, "postgres")) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1")]


def _restore_postgres(settings: Settings, dumps: list[Path], echo: Callable[[str], None]) -> None:
    """The embedded PostgreSQL started alone on the restored home, each dump restored into a database of its
    name, then stopped (`mlyard up` starts it again with the rest)."""
    import signal

    import psycopg

    from mlyard.postgres import start_postgres
    from mlyard.tasks.processes import alive

    started: dict[str, object] = {}
    start_postgres(settings, started)
    if "error" in started:
        raise StackError(f"the embedded PostgreSQL did not start for the restore: {started['error']}")
    try:
        with psycopg.connect(_pg_url(settings, "postgres"), autocommit=True) as conn:
            for dump in dumps:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dump.stem,)).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{dump.stem}"')
        for dump in dumps:
            pg_client("pg_restore", ["--clean", "--if-exists", "--no-owner", "--exit-on-error",
                                         f"--dbname={_pg_url(settings, dump.stem)}", str(dump)])
            echo(f"  PostgreSQL database {dump.stem}: restored")
    finally:
        pid = int(started["pid"])  # type: ignore[call-overload]
        os.kill(pid, signal.SIGINT)  # its fast shutdown
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        link = settings.pgsocket_dir
        if link.is_symlink() and link.lstat().st_uid == os.geteuid():
            link.unlink()
