"""Endpoints, stages and stage resources in the catalog, with the console's rules in one place."""

import pytest

from mlyard.core.errors import AlreadyExists, EndpointNotFound, ModelInUse, Protected, SpecError
from mlyard.core.specs import load_spec
from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
from mlyard.registry.endpoints import Endpoints


def _spec(name="iris-api", **stage):
    return EndpointSpec(name=name, description="iris", stage=StageSpec(resources=[StageResourceSpec(model="iris@champion")],
                                                                       **stage))


@pytest.fixture()
def eps(catalog):
    return Endpoints(catalog)


def _activate(eps, endpoint, stage):
    view = eps.get(endpoint)
    st = next(s for s in view["stages"] if s["name"] == stage)
    for r in st["resources"]:
        eps.set_status(endpoint, "ACTIVE", stage, r["id"])
    eps.set_status(endpoint, "ACTIVE", stage, gateway_status="ACTIVE")
    eps.set_status(endpoint, "ACTIVE")


def test_an_endpoint_is_recorded_with_its_default_stage_and_statuses(eps):
    view = eps.create(_spec(), [("iris", "2")])
    assert view["status"] == "CREATE REQUESTED" and view["default_stage"] == "default" and not view["public"]
    stage = view["stages"][0]
    assert (stage["status"], stage["gateway_status"]) == ("CREATE REQUESTED", "CREATE IN PROGRESS")
    assert stage["resources"][0]["model"] == "iris/2" and stage["resources"][0]["status"] == "CREATE REQUESTED"
    _activate(eps, "iris-api", "default")
    assert eps.get("iris-api")["status"] == "ACTIVE"
    with pytest.raises(AlreadyExists):
        eps.create(_spec(), [("iris", "2")])
    with pytest.raises(SpecError, match="stage status"):
        eps.set_status("iris-api", "RUNNING", "default")
    with pytest.raises(EndpointNotFound):
        eps.get("nope")


def test_the_rules(eps, catalog):
    eps.create(_spec(), [("iris", "2")])
    _activate(eps, "iris-api", "default")
    with pytest.raises(Protected, match="default stage"):
        eps.delete_stage("iris-api", "default")
    eps.add_stage("iris-api", StageSpec(name="canary", resources=[StageResourceSpec(model="iris/3"),
                                                                  StageResourceSpec(model="iris/3", pods=2)]),
                  [("iris", "3"), ("iris", "3")])
    with pytest.raises(AlreadyExists):
        eps.add_stage("iris-api", StageSpec(name="canary", resources=[StageResourceSpec(model="iris/3")]), [("iris", "3")])
    with pytest.raises(Protected, match="CREATE REQUESTED"):  # nothing is deleted while it is being made
        eps.delete_stage("iris-api", "canary")
    with pytest.raises(Protected, match="other than the default"):
        eps.delete("iris-api")
    assert catalog.endpoints_serving("iris", "3") == ["iris-api/canary"]  # a served version cannot be deleted
    _activate(eps, "iris-api", "canary")
    old = eps.promote("iris-api", "canary")
    assert old == "default" and eps.get("iris-api")["default_stage"] == "canary"
    eps.delete_stage("iris-api", "default", replaced=True)
    assert [s["name"] for s in eps.get("iris-api")["stages"]] == ["canary"]
    assert catalog.endpoints_serving("iris", "2") == []
    eps.delete("iris-api")
    assert eps.all() == []


def test_the_serving_history_outlives_the_endpoint(eps):
    eps.create(_spec(), [("iris", "2")])
    _activate(eps, "iris-api", "default")
    eps.add_stage("iris-api", StageSpec(name="next", resources=[StageResourceSpec(model="iris/3")]), [("iris", "3")])
    _activate(eps, "iris-api", "next")
    eps.promote("iris-api", "next")
    eps.delete_stage("iris-api", "default", replaced=True)
    eps.delete("iris-api")
    history = [h.as_dict() for h in eps.history("iris-api")]
    assert [(h["stage"], h["model"]) for h in history] == [("default", "iris/2"), ("next", "iris/3")]
    assert all(h["ended_at"] is not None for h in history)
    assert "replaced as default" in history[0]["note"] and "endpoint deleted" in history[1]["note"]


def test_a_served_model_version_cannot_be_deleted(eps, tracking, catalog, sklearn_model_dir):
    from mlyard.registry import ModelRegistry

    models = ModelRegistry(tracking, catalog)
    models.create_from_directory("iris", sklearn_model_dir, "s3://b/iris")
    eps.create(_spec(), [("iris", "1")])
    with pytest.raises(ModelInUse, match="iris-api/default"):
        models.delete("iris", "1")


@pytest.mark.parametrize("data, field", [
    ({"name": "Bad_Name", "stage": {"resources": [{"model": "iris/1"}]}}, "name"),
    ({"name": "ok", "stage": {"resources": []}}, "stage.resources"),
    ({"name": "ok", "stage": {"resources": [{"model": "iris/1", "pods": -1}]}}, "stage.resources.0.pods"),
    ({"name": "ok", "stage": {"resources": [{"model": "./local/dir"}]}}, "stage.resources.0.model"),
    ({"name": "ok", "stage": {"node_autoscaler": {"min_nodes": 5, "max_nodes": 2}, "resources": [{"model": "iris/1"}]}},
     "stage.node_autoscaler"),
    ({"name": "ok", "stage": {"resources": [{"model": "iris/1", "pod_autoscaler": {"metric": "gpu"}}]}},
     "stage.resources.0.pod_autoscaler.metric"),
    ({"name": "ok", "stage": {"resources": [{"model": "iris/1", "memory": "lots"}]}}, "stage.resources.0.memory"),
])
def test_a_bad_endpoint_spec_names_the_field(data, field):
    with pytest.raises(SpecError) as exc:
        load_spec(EndpointSpec, data)
    assert field in str(exc.value)


def test_tokens_expire_are_revoked_and_belong_to_their_endpoint(eps, catalog):
    from datetime import datetime, timedelta, timezone

    from mlyard.registry.tables import EndpointToken

    eps.create(_spec(), [("iris", "2")])
    eps.create(EndpointSpec(name="open-api", public=True, stage=StageSpec(resources=[StageResourceSpec(model="iris/2")])),
               [("iris", "2")])
    eps.create(_spec("other-api"), [("iris", "2")])
    soon = datetime.now(timezone.utc) + timedelta(days=30)
    issued = eps.issue_token("iris-api", soon)
    token = issued["token"]
    assert issued["state"] == "valid" and token.startswith(issued["prefix"])
    assert "token" not in eps.tokens("iris-api")[0]  # shown once, kept as a digest
    assert eps.check_token("iris-api", f"Bearer {token}") is None
    assert eps.check_token("iris-api", f"BackendAI {token}") is None
    assert eps.check_token("open-api", None) is None  # open to the public
    for header, words in ((None, "needs a token"), ("Bearer", "needs a token"), ("Basic abc", "needs a token"),
                          (f"Bearer {token}x", "not valid"), ("Bearer " + "x" * 600, "needs a token")):
        assert words in eps.check_token("iris-api", header)
    assert "not valid" in eps.check_token("other-api", f"Bearer {token}")  # another endpoint's token
    with catalog.session() as s:  # time passes
        s.query(EndpointToken).update({"expires_at": datetime.now(timezone.utc) - timedelta(seconds=1)})
    assert "expired" in eps.check_token("iris-api", f"Bearer {token}")
    fresh = eps.issue_token("iris-api", soon)
    eps.revoke_token("iris-api", fresh["id"])
    assert "revoked" in eps.check_token("iris-api", f"Bearer {fresh['token']}")
    assert [t["state"] for t in eps.tokens("iris-api")] == ["expired", "revoked"]
    with pytest.raises(SpecError, match="in the future"):
        eps.issue_token("iris-api", datetime.now(timezone.utc) - timedelta(days=1))
