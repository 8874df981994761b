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
        assert conn.execute(text("select version_num from mlyard_alembic_version")).scalar() == "0020"
    catalog.upgrade()  # re-opening an up-to-date catalog is a no-op
    # the head that lets an up-to-date catalog open without alembic is alembic's own head
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mlyard.registry.catalog import HEAD, MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD == catalog.revision() == "0020"


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
    catalog = Catalog(url)  # opening it upgrades to the newest revision
    try:
        assert catalog.endpoints_serving("iris", "3") == ["ep/default"]
        with catalog.engine.begin() as conn:  # and back down: the model returns to its stage
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        with catalog.engine.connect() as conn:
            assert conn.execute(text("select model_name, model_version from endpoint_stages")).one() == ("iris", "3")
    finally:
        catalog.dispose()
