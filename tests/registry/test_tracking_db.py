"""A new SQLite MLflow database starts as a copy of the installation's migrated empty one (make install),
not by MLflow running its Alembic migrations in whichever process opens it first."""

import sqlite3
from contextlib import closing

from mlyard.registry.tracking import Tracking, prepare_db, start_db


def _version(db) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_a_new_database_is_the_prepared_one_and_mlflow_uses_it(tmp_path, monkeypatch):
    prepared = prepare_db()
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    tracking = Tracking(f"sqlite:///{db}", tmp_path / "artifacts")
    assert db.is_file() and db.stat().st_mode & 0o777 == 0o600
    assert _version(db) == _version(prepared)
    assert tracking.client.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")  # as MLflow makes it
    run_id = tracking.start_run("made-here", "r", {})
    tracking.client.log_metric(run_id, "loss", 0.5)
    assert tracking.client.get_run(run_id).data.metrics == {"loss": 0.5}


def test_an_existing_database_is_never_replaced(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a copy")
    start_db(f"sqlite:///{db}")
    assert db.read_bytes() == b"not a copy"
