import pytest
from sqlalchemy import inspect, text

from mlyard.core.errors import AlreadyExists, SpecError, TemplateNotFound
from mlyard.core.specs import TrainingSpec
from mlyard.registry import Templates
from mlyard.registry.tables import Endpoint, EndpointStage, StageResource

SPEC = TrainingSpec(name="base", source_uri="examples/sklearn_digits", entry_point="train.py",
                    hyperparameters={"epochs": 5})


def test_migrations_create_the_schema(catalog):
    tables = set(inspect(catalog.engine).get_table_names())
    assert {"training_templates", "endpoints", "endpoint_stages", "stage_resources", "serving_history",
            "mlyard_alembic_version", "registry_accounts", "images", "endpoint_stat_minutes", "notebooks",
            "promotions", "live_counts"} <= tables
    with catalog.engine.connect() as conn:
        assert conn.execute(text("select version_num from mlyard_alembic_version")).scalar() == "0021"
    catalog.upgrade()  # re-opening an up-to-date catalog is a no-op
    # the head that lets an up-to-date catalog open without alembic is alembic's own head
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mlyard.registry.catalog import HEAD, MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD == catalog.revision() == "0021"


def test_templates_lifecycle(catalog):
    t = Templates(catalog)
    t.create("digits", SPEC, "five epochs")
    with pytest.raises(AlreadyExists, match="'digits' already exists"):
        t.create("digits", SPEC)
    t.copy("digits", "digits-long", {"hyperparameters": {"epochs": 50}})
    assert [x.name for x in t.list()] == ["digits", "digits-long"]
    assert t.get("digits-long").spec.hyperparameters == {"epochs": 50}
    assert t.spec_for("digits", {"name": "run-1"}).name == "run-1"
    t.delete("digits")
    with pytest.raises(TemplateNotFound, match="mlyard templates list"):
        t.get("digits")


def test_bad_template_name_or_override_leaves_nothing(catalog):
    t = Templates(catalog)
    with pytest.raises(SpecError):
        t.create("Bad Name", SPEC)
    t.create("ok", SPEC)
    with pytest.raises(SpecError):
        t.copy("ok", "copy", {"nodes": 0})
    assert [x.name for x in t.list()] == ["ok"]


def test_endpoints_serving(catalog):
    with catalog.session() as s:
        s.add(Endpoint(name="ep", stages=[EndpointStage(name="default", is_default=True, resources=[
            StageResource(model_name="m", model_version="2")])]))
    assert catalog.endpoints_serving("m") == ["ep/default"]
    assert catalog.endpoints_serving("m", "2") == ["ep/default"]
    assert catalog.endpoints_serving("m", "1") == []


def test_catalog_and_optuna_share_a_database(tmp_path):
    """Optuna's studies live in the catalog DB; each keeps its own migration history."""
    import optuna

    from mlyard.registry import Catalog

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Catalog(url).dispose()
    study = optuna.create_study(study_name="s", storage=url)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.25)
    catalog = Catalog(url)  # re-opening after Optuna migrated its tables still works, and so do its own tables
    Templates(catalog).create("shared", TrainingSpec(name="shared", source_uri="/src", entry_point="t.py"))
    assert Templates(catalog).get("shared").spec.entry_point == "t.py"
    tables = set(inspect(catalog.engine).get_table_names())
    assert {"mlyard_alembic_version", "alembic_version", "studies", "trials"} <= tables
    catalog.dispose()
    assert optuna.load_study(study_name="s", storage=url).best_value == 0.25


def test_a_catalog_made_at_0001_moves_each_stage_model_to_a_stage_resource(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from mlyard.registry import Catalog
    from mlyard.registry.catalog import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("insert into endpoints (id, name, created_at) values (1, 'ep', '2026-01-01')"))
        conn.execute(text("insert into endpoint_stages (endpoint_id, name, is_default, model_name, model_version) "
                          "values (1, 'default', 1, 'iris', '3')"))
    engine.dispose()
    catalog = Catalog(url, upgrade=True)  # the migration (`mlyard admin migrate`, the Job) upgrades it
    try:
        assert catalog.endpoints_serving("iris", "3") == ["ep/default"]
        with catalog.engine.begin() as conn:  # and back down: the model returns to its stage
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        with catalog.engine.connect() as conn:
            assert conn.execute(text("select model_name, model_version from endpoint_stages")).one() == ("iris", "3")
    finally:
        catalog.dispose()


def _at(url: str, revision: str, compatible_from: str | None = None) -> None:
    """A catalog at `revision`, as a migration of that release leaves it (a newer one: HEAD's schema under a
    newer revision and stamp, as the next release's migration would leave it for this one)."""
    from sqlalchemy import create_engine

    from mlyard.registry.catalog import HEAD, STAMP, Catalog

    c = Catalog(url, upgrade=False)
    c.upgrade(min(revision, HEAD))
    c.dispose()
    if revision > HEAD:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE mlyard_alembic_version SET version_num = :r"), {"r": revision})
            conn.execute(STAMP.update().values(revision=revision, compatible_from=compatible_from, release="9.9.9"))
        engine.dispose()


def test_only_the_migration_migrates_and_an_older_schema_is_refused_naming_both(tmp_path):
    from mlyard.core.errors import SchemaMismatch
    from mlyard.registry.catalog import HEAD, Catalog

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    previous = f"{int(HEAD) - 1:04d}"
    _at(url, previous)
    with pytest.raises(SchemaMismatch) as refused:
        Catalog(url)
    said = str(refused.value)
    assert f"at schema {previous}, older than this mlyard's" in said and f"schema {HEAD}" in said
    assert "mlyard admin migrate" in said and "\n" not in said
    assert Catalog(url, upgrade=False).revision() == previous  # nothing was migrated by the refused open
    migrated = Catalog(url, upgrade=True)
    assert migrated.revision() == HEAD
    from mlyard.registry.catalog import compatible_from, schema_stamp

    with migrated.engine.connect() as conn:
        stamp = schema_stamp(conn)
    assert stamp is not None and stamp["revision"] == HEAD and stamp["compatible_from"] == compatible_from(HEAD) == "0020"
    from mlyard.core.names import RELEASE

    assert stamp["release"] == RELEASE
    Catalog(url).dispose()  # at this release's schema: opens


def test_a_newer_schema_runs_this_release_only_when_its_stamp_says_so(tmp_path):
    from mlyard.core.errors import SchemaMismatch
    from mlyard.registry.catalog import HEAD, Catalog

    newer = f"{int(HEAD) + 1:04d}"
    tolerated, refused = f"sqlite:///{tmp_path / 'expand.db'}", f"sqlite:///{tmp_path / 'contract.db'}"
    _at(tolerated, newer, compatible_from=HEAD)  # the next release's migration only added: this one runs on it
    catalog = Catalog(tolerated)
    Templates(catalog).list()
    catalog.dispose()
    _at(refused, newer, compatible_from=newer)  # it dropped or renamed what this release reads
    with pytest.raises(SchemaMismatch) as mismatch:
        Catalog(refused)
    said = str(mismatch.value)
    assert f"at schema {newer}, which runs code of schema {newer} or newer (release 9.9.9" in said
    assert "this mlyard" in said and f"is at schema {HEAD}" in said and "\n" not in said


def test_a_rollbacks_migration_leaves_a_newer_schema_it_runs_on_and_refuses_one_it_does_not(tmp_path):
    """The previous release's migration Job, run again by a rollback (`mlyard k8s apply` of its images) after
    this one migrated: nothing to do on an expand-only schema; one line, and nothing changed, on another."""
    from mlyard.core.errors import SchemaMismatch
    from mlyard.registry.catalog import HEAD, Catalog
    from mlyard.registry.migrate import migrate_catalog

    newer = f"{int(HEAD) + 1:04d}"
    tolerated, refused = f"sqlite:///{tmp_path / 'expand.db'}", f"sqlite:///{tmp_path / 'contract.db'}"
    _at(tolerated, newer, compatible_from=HEAD)
    assert migrate_catalog(tolerated) == (f"catalog: at {newer}, newer than this release's {HEAD}, which runs on "
                                          "it: nothing to do")
    assert Catalog(tolerated, upgrade=False).revision() == newer
    _at(refused, newer, compatible_from=newer)
    with pytest.raises(SchemaMismatch) as mismatch:
        migrate_catalog(refused)
    assert f"at schema {newer}, which runs code of schema {newer} or newer" in str(mismatch.value)
    assert Catalog(refused, upgrade=False).revision() == newer


def test_a_migrations_floor_follows_expand_only_migrations_down(tmp_path, monkeypatch):
    from mlyard.registry import catalog

    versions = tmp_path / "versions"
    versions.mkdir()
    for name, text_ in (("0030_a.py", ""), ("0031_b.py", 'COMPATIBLE_FROM = "0030"\n'),
                        ("0032_c.py", 'COMPATIBLE_FROM = "0031"\n'), ("0033_d.py", "# drops a column\n")):
        (versions / name).write_text(text_)
    monkeypatch.setattr(catalog, "MIGRATIONS", tmp_path)
    assert [catalog.compatible_from(r) for r in ("0030", "0031", "0032", "0033")] == ["0030", "0030", "0030", "0033"]


def test_admin_migrate_migrates_a_homes_catalog_once_and_a_members_key_is_refused(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mlyard.registry.catalog import HEAD, Catalog

    previous = f"{int(HEAD) - 1:04d}"
    _at(f"sqlite:///{tmp_path / '.mlyard' / 'catalog.db'}", previous)
    mlyard = str(Path(sys.executable).with_name("mlyard"))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    runs = [subprocess.run([mlyard, "admin", "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs
    assert [r.stdout.strip() for r in runs] == [f"catalog: migrated from {previous} to {HEAD}",
                                                f"catalog: at {HEAD} already, nothing to do"]
    member = subprocess.run([mlyard, "admin", "migrate"], cwd=tmp_path, env={**env, "MLYARD_API_KEY": "mlyk_x"},
                            capture_output=True, text=True, timeout=120)
    assert member.returncode == 2 and "not with a team member's key" in member.stderr
    assert Catalog(f"sqlite:///{tmp_path / '.mlyard' / 'catalog.db'}").revision() == HEAD
