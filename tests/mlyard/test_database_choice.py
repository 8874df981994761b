"""The embedded stack's choice of database (core/settings.py: `database`): kept by the home, refused when
it would change, and the embedded PostgreSQL refused where it would be reachable by others or was made
by another PostgreSQL. No stack: the home is a folder, PostgreSQL is not started."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlyard.core.errors import StackError
from mlyard.core.settings import Settings
from mlyard.postgres import _refusal
from mlyard.stack_parts import choose_database


def test_a_new_home_keeps_the_choice_of_its_first_up(tmp_path):
    home = tmp_path / ".mlyard"
    home.mkdir()
    choose_database(Settings(home=home, database="postgres"))
    assert (home / "database").read_text() == "postgres\n" and (home / "database").stat().st_mode & 0o077 == 0
    later = Settings(home=home, database=None)  # a command without MLYARD_DATABASE: the home says where its stores are
    socket_dir = (home / "postgres").resolve()
    assert later.embedded_database == "postgres"
    url = later.catalog_db_url  # the socket asks for the home's password, kept in the home for its user alone
    password = (home / "pg-password").read_text().strip()
    assert len(password) >= 24 and (home / "pg-password").stat().st_mode & 0o077 == 0
    assert url == f"postgresql+psycopg://postgres:{password}@/catalog?host={socket_dir}"
    assert later.mlflow_uri == f"postgresql+psycopg://postgres:{password}@/mlflow?host={socket_dir}"
    assert later.prefect_database_url == f"postgresql+asyncpg://postgres:{password}@/prefect?host={socket_dir}"
    # servers named in settings are used as they are
    named = Settings(home=home, catalog_url="postgresql+psycopg://db/catalog", mlflow_tracking_uri="http://mlflow:5000")
    assert named.catalog_db_url == "postgresql+psycopg://db/catalog" and named.mlflow_uri == "http://mlflow:5000"


def test_a_home_made_on_sqlite_stays_on_it_and_says_how_to_change(tmp_path):
    home = tmp_path / ".mlyard"
    (home / "prefect").mkdir(parents=True)
    (home / "catalog.db").write_bytes(b"")  # a home from before the choice existed
    assert Settings(home=home, database=None).prefect_database_url is None
    with pytest.raises(StackError) as refused:
        choose_database(Settings(home=home, database="postgres"))
    line = str(refused.value)
    assert "\n" not in line and "MLYARD_DATABASE=postgres" in line and str(home) in line and "MLYARD_HOME" in line
    assert (home / "database").read_text() == "sqlite\n"  # what the home is, kept
    assert Settings(home=home, database="postgres").catalog_db_url == f"sqlite:///{home / 'catalog.db'}"
    choose_database(Settings(home=home, database=None))  # unset: the home's choice, no complaint


def test_a_home_too_deep_for_a_socket_reaches_postgresql_through_a_short_link_of_its_own(tmp_path):
    """The socket stays in the private data folder; clients and the server name it through a link in the
    temporary folder (a world-writable socket folder would let every local account in without a password)."""
    import os

    from mlyard.core.errors import StackError
    from mlyard.postgres import _link

    deep = Settings(home=tmp_path / ("d" * 90) / ".mlyard", database="postgres")
    data = deep.pgdata_dir.resolve()
    link = deep.pgsocket_dir
    assert link != data and len(str(link / ".s.PGSQL.5432")) <= 107 and str(os.geteuid()) in link.name
    assert deep.catalog_db_url.endswith(f"@/catalog?host={link}")
    data.mkdir(parents=True)
    try:
        _link(link, data)
        _link(link, data)  # found, and ours: kept
        assert os.readlink(link) == str(data)
        link.unlink()
        link.symlink_to(tmp_path)  # someone else's idea of it
        with pytest.raises(StackError, match="is not this user's link"):
            _link(link, data)
    finally:
        link.unlink(missing_ok=True)
    shallow = Settings(home=tmp_path / ".mlyard")
    assert shallow.pgsocket_dir == shallow.pgdata_dir.resolve()


def test_a_data_folder_of_another_postgresql_is_kept_and_named(tmp_path):
    data = tmp_path / "postgres"
    data.mkdir()
    (data / "PG_VERSION").write_text("16\n")
    said = _refusal(data)
    assert said is not None and "PostgreSQL 16" in said and f"mv {data} {data}-16" in said
    assert (data / "PG_VERSION").read_text() == "16\n"
    (data / "PG_VERSION").write_text("18\n")
    assert _refusal(data) is None
    assert _refusal(Path("/nonexistent/postgres")) is None
