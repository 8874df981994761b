"""Traffic shares and promotions in the catalog (registry/traffic.py), with their rules in one place."""

import pytest

from mlyard.core.errors import Protected, SpecError
from mlyard.core.specs import load_spec
from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
from mlyard.core.specs.promotion import PolicySpec, TrafficSpec
from mlyard.registry.endpoints import Endpoints
from mlyard.registry.traffic import Traffic, orphaned


def _active(eps, endpoint, stage):
    st = next(s for s in eps.get(endpoint)["stages"] if s["name"] == stage)
    for r in st["resources"]:
        eps.set_status(endpoint, "ACTIVE", stage, r["id"])
    eps.set_status(endpoint, "ACTIVE", stage, gateway_status="ACTIVE")
    eps.set_status(endpoint, "ACTIVE")


@pytest.fixture()
def shop(catalog):
    eps = Endpoints(catalog)
    eps.create(EndpointSpec(name="shop", stage=StageSpec(resources=[StageResourceSpec(model="iris/1")])), [("iris", "1")])
    _active(eps, "shop", "default")
    for name, model in (("a", "iris"), ("b", "iris"), ("other", "digits")):
        eps.add_stage("shop", StageSpec(name=name, resources=[StageResourceSpec(model=f"{model}/2")]), [(model, "2")])
        eps.set_status("shop", "ACTIVE")  # the endpoint itself (its new stage is still CREATE REQUESTED)
    return eps, Traffic(catalog)


def test_shares_follow_the_rules_and_the_history_says_who_served_what_share(shop):
    eps, traffic = shop
    with pytest.raises(Protected, match="CREATE REQUESTED"):  # only an ACTIVE stage takes traffic
        traffic.set_share("shop", "a", weight=10)
    for name in ("a", "b", "other"):
        _active(eps, "shop", name)
    with pytest.raises(SpecError, match="other than the default"):
        traffic.set_share("shop", "default", weight=10)
    with pytest.raises(SpecError, match="serving a model of the default stage"):
        traffic.set_share("shop", "other", weight=10)
    assert traffic.set_share("shop", "a", weight=60) == {"default": 40, "a": 60, "b": 0, "other": 0}
    with pytest.raises(SpecError, match="at most 39"):
        traffic.set_share("shop", "b", weight=40)
    with pytest.raises(SpecError, match="either answers a share or shadows it"):
        traffic.set_share("shop", "a", shadow=10)
    traffic.set_share("shop", "b", shadow=25)
    routing = eps.routing()["shop"]["stages"]
    assert (routing["a"]["weight"], routing["b"]["shadow"]) == (60, 25)
    assert [s["weight"] for s in eps.get("shop")["stages"]] == [0, 60, 0, 0]
    traffic.set_share("shop", "a", weight=0)
    open_ = {(h.stage, h.share, h.shadow) for h in eps.history("shop") if h.ended_at is None}
    assert open_ == {("default", None, None), ("a", None, None), ("b", None, 25), ("other", None, None)}, open_
    shares = [(h.stage, h.share) for h in eps.history("shop") if h.share]
    assert shares == [("a", 60), ("default", 40)], shares
    eps.promote("shop", "b")  # the promoted stage answers everything: its share and shadow are reset
    assert {s["name"]: (s["weight"], s["shadow"]) for s in eps.get("shop")["stages"]}["b"] == (0, 0)


def test_one_promotion_at_a_time_and_an_orphan_is_seen(shop):
    eps, traffic = shop
    _active(eps, "shop", "a")
    _active(eps, "shop", "b")
    traffic.set_share("shop", "b", weight=60)
    with pytest.raises(SpecError, match="other stages of shop take 60"):  # 60 + 50 would pass 99 mid-promotion
        traffic.start("shop", "a", PolicySpec(steps=[10, 50, 100]), "run-0")
    policy = PolicySpec(steps=[10, 100], step_seconds=5)
    promo = traffic.start("shop", "a", policy, "run-1")
    assert promo["status"] == "RUNNING" and promo["phase"] == "evaluation" and not orphaned(promo)
    with pytest.raises(Protected, match="already has a promotion in progress"):
        traffic.start("shop", "a", policy, "run-2")
    promo = traffic.update(promo["id"], phase="steps", step=0, gate={"gate": "live", "passed": None})
    assert promo["weight"] == 10 and promo["gates"] == [{"gate": "live", "passed": None}]
    assert orphaned(traffic.update(promo["id"], flow_run_id=None))
    traffic.update(promo["id"], status="ABORTED")
    assert traffic.active("shop") is None and traffic.heartbeat(promo["id"]) == "ABORTED"
    # A resuming run read it RUNNING just before the abort: its write does not bring it back
    with pytest.raises(Protected, match=r"already ended \(ABORTED\)"):
        traffic.update(promo["id"], status="RUNNING", reason="", flow_run_id="run-3")
    assert traffic.active("shop") is None and traffic.promotions("shop")[0]["flow_run_id"] is None


@pytest.mark.parametrize("data,field", [
    ({"steps": [50, 20]}, "steps"), ({"steps": [10, 50]}, "steps"), ({"steps": [0, 100]}, "steps"),
    ({"gates": {"evaluation": {"dataset": "x.csv", "metric": "f1_micro"}}}, "metric"),
    ({"gates": {"live": {"min_requests": 10}}}, "live"), ({"on_failure": "explode"}, "on_failure"),
    ({"gates": {"shadow": {"min_agreement": 2}}}, "min_agreement"), ({"step_second": 5}, "step_second"),
])
def test_a_bad_policy_names_the_field(data, field):
    with pytest.raises(SpecError) as err:
        load_spec(PolicySpec, data)
    assert field in str(err.value)


def test_a_traffic_spec_wants_one_share():
    with pytest.raises(SpecError, match="give weight"):
        load_spec(TrafficSpec, {"endpoint": "shop", "stage": "a"})
    with pytest.raises(SpecError, match="weight"):
        load_spec(TrafficSpec, {"endpoint": "shop", "stage": "a", "weight": 100})


def test_deleting_the_candidate_stage_aborts_its_promotion(shop):
    eps, traffic = shop
    _active(eps, "shop", "a")
    promo = traffic.start("shop", "a", PolicySpec(steps=[10, 100]), "run-1")
    eps.delete_stage("shop", "a")
    assert traffic.active("shop") is None
    (ended,) = traffic.promotions("shop")
    assert ended["id"] == promo["id"] and ended["status"] == "ABORTED" and ended["reason"] == "the stage was deleted"
