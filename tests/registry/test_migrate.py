"""The catalog's migrations on PostgreSQL, as production runs them: two processes (the migration Job and a
pod that opens the catalog, or two Jobs) upgrading the previous release's catalog at the same moment. Alembic
has no lock of its own; under the catalog's advisory lock one migrates and the other then finds nothing to
do, and neither fails. The database is a fresh one in the stack's embedded PostgreSQL (the RAG one)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from sqlalchemy import text

from mlyard.core.errors import SchemaMismatch
from mlyard.registry.catalog import HEAD, Catalog

ROOT = Path(__file__).resolve().parents[2]


def _fresh_database(server_url: str) -> str:
    name = f"catalog_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    socket_dir = parse_qs(parts.query)["host"][0]
    return f"postgresql+psycopg://{parts.username}:{parts.password or ''}@/{name}?host={socket_dir}"


def test_two_processes_migrating_the_previous_releases_catalog_at_once_migrate_it_once(stack):
    url = _fresh_database(stack.vector_store_url)
    previous = f"{int(HEAD) - 1:04d}"
    with pytest.raises(SchemaMismatch, match="has no schema yet"):  # a pod or a workstation makes none
        Catalog(url)
    old = Catalog(url, upgrade=False)
    old.upgrade(previous)
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO training_templates (name, description, spec, created_at) "
                          "VALUES ('kept', '', '{}', now())"))
    old.dispose()
    with pytest.raises(SchemaMismatch, match=f"at schema {previous}, older than"):  # nor migrates an old one
        Catalog(url)

    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "MLYARD_CATALOG_URL": url, "MLYARD_HOME": str(Path(os.environ["MLYARD_HOME"]).parent / "migrate-home")}
    procs = [subprocess.Popen([sys.executable, "-m", "mlyard.registry.migrate"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(out.strip() for out, _ in outs)
    assert said == [f"catalog: at {HEAD} already, nothing to do", f"catalog: migrated from {previous} to {HEAD}"], said

    catalog = Catalog(url, upgrade=False)
    try:
        assert catalog.revision() == HEAD
        with catalog.engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM training_templates")).scalars().all() == ["kept"]
    finally:
        catalog.dispose()
