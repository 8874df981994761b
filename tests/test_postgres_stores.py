"""The PostgreSQL tier (`make test`'s second stage, MLYARD_DATABASE=postgres): the stack's Prefect, MLflow
and catalog databases are the embedded PostgreSQL's, as production's are, and nothing of them falls back
to a SQLite file. The users' paths that this tier runs again (tests/test_user_paths.py, parallel tuning
trials, a promotion, a schedule's catch-up: the Makefile lists them) then exercise PostgreSQL's types,
locks, migrations and concurrent writers."""

from __future__ import annotations

import pytest

from tests.test_user_paths import EXAMPLES, _ok, mlyard, project


@pytest.fixture(scope="module")
def postgres(settings):
    if settings.embedded_database != "postgres":
        pytest.skip("the PostgreSQL tier's (make test runs it after the main run, with MLYARD_DATABASE=postgres)")
    import psycopg

    def query(database: str, sql: str) -> list[tuple]:
        url = settings.embedded_postgres_url(database).replace("+psycopg", "")
        with psycopg.connect(url) as conn:
            return conn.execute(sql).fetchall()

    return query


def test_every_store_is_a_database_of_the_embedded_postgresql(postgres, stack, settings):
    import shutil

    work = project("on-postgres")
    shutil.copytree(EXAMPLES / "sklearn_digits", work / "algo")
    (work / "train.yaml").write_text("name: on-postgres\nexperiment: on-postgres\nsource_uri: algo\n"
                                     "entry_point: train.py\nhyperparameters: {epochs: 1, epoch_seconds: 0}\n")
    _ok(mlyard("train", "-f", "train.yaml", cwd=work))  # a user's command, which finds the stores itself

    home = settings.home_dir
    assert not [p.name for p in (home / "mlflow.db", home / "catalog.db", home / "prefect" / "prefect.db") if p.exists()]
    assert (home / "database").read_text().strip() == "postgres"
    # Prefect's run, MLflow's run and the catalog's schema, each in its own database
    assert postgres("prefect", "SELECT count(*) FROM flow_run WHERE name IS NOT NULL")[0][0] >= 1
    assert ("on-postgres",) in postgres("mlflow", "SELECT name FROM experiments")
    assert postgres("mlflow", "SELECT count(*) FROM runs r JOIN experiments e USING (experiment_id) "
                              "WHERE e.name = 'on-postgres' AND r.status = 'FINISHED'")[0][0] == 1
    assert postgres("catalog", "SELECT version_num FROM mlyard_alembic_version")
    # Prefect's PostgreSQL schema is the one production runs: its trigram indexes (pg_trgm) are there
    assert ("pg_trgm",) in postgres("prefect", "SELECT extname FROM pg_extension")
    status = _ok(mlyard("status", "--json"))
    assert "postgresql+psycopg://" in status and "catalog.db" not in status
    # its socket asks for the home's password (a process that reaches the socket and not the home gets
    # nothing), which status does not print and no process of the stack carries on its command line
    import psycopg

    password = (home / "pg-password").read_text().strip()
    assert password not in status
    bare = settings.embedded_postgres_url("catalog").replace("+psycopg", "").replace(f":{password}@", ":@")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(bare).close()
    import psutil

    shown = [p.pid for p in psutil.process_iter(["cmdline"]) if password in " ".join(p.info["cmdline"] or [])]
    assert not shown, f"the password is on the command line of {shown}"


def test_a_process_holds_no_more_catalog_connections_than_its_share(postgres, stack, settings, tmp_path):
    """MLYARD_CATALOG_CONNECTIONS (a cluster's share of a database server's connections,
    tasks/cluster_connections.py) bounds a process's catalog pool: ten threads asking at once get three
    connections at most, the rest wait their turn, and all finish."""
    import subprocess
    import sys
    import threading
    import time

    url = settings.embedded_postgres_url("catalog")
    url += ("&" if "?" in url else "?") + "application_name=share-test"
    script = tmp_path / "ten.py"
    script.write_text(
        "import sys, threading\n"
        "from sqlalchemy import text\n"
        "from mlyard.registry.catalog import shared\n"
        "catalog = shared(sys.argv[1])\n"
        "def one():\n"
        "    with catalog.engine.connect() as conn:\n"
        "        conn.execute(text('SELECT pg_sleep(1)'))\n"
        "threads = [threading.Thread(target=one) for _ in range(10)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print('all ten done')\n")
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(postgres("catalog", "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                            "'share-test'")[0][0])
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ran = subprocess.run([sys.executable, str(script), url], capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLYARD_CATALOG_CONNECTIONS": "3"})
    finally:
        done.set()
        watcher.join()
    assert ran.returncode == 0 and "all ten done" in ran.stdout, ran.stderr
    assert max(seen) == 3, seen
