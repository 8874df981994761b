"""What a failed gate does to a promotion, by `on_failure` (flows/endpoint_rollout.py), on a real catalog
(SQLite) without a stack: the gateway call of a share change is left out (the stack tests,
test_promotion.py, go through it); everything else is the flow's own code."""

import logging

import pytest

from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
from mlyard.core.specs.promotion import PolicySpec
from mlyard.registry.catalog import Catalog
from mlyard.registry.endpoints import Endpoints
from mlyard.registry.traffic import Traffic, orphaned
from mlyard.serving.traffic import Judgement


@pytest.fixture()
def shop(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    eps = Endpoints(catalog)
    eps.create(EndpointSpec(name="shop", stage=StageSpec(resources=[StageResourceSpec(model="iris/1")])), [("iris", "1")])
    eps.set_status("shop", "ACTIVE")
    eps.add_stage("shop", StageSpec(name="cand", resources=[StageResourceSpec(model="iris/2")]), [("iris", "2")])
    for stage in ("default", "cand"):
        (res,) = next(s for s in eps.get("shop")["stages"] if s["name"] == stage)["resources"]
        eps.set_status("shop", "ACTIVE", stage, res["id"])
        eps.set_status("shop", "ACTIVE", stage)
    eps.set_status("shop", "ACTIVE")
    yield eps, Traffic(catalog)
    catalog.dispose()


def _run(traffic: Traffic, eps: Endpoints, on_failure: str):
    from mlyard.flows.endpoint_rollout import _Run

    promo = traffic.start("shop", "cand", PolicySpec(steps=[10, 100], on_failure=on_failure), "run-1")
    run = _Run.__new__(_Run)  # as the flow makes it, minus the gateway and the run logger
    run.traffic, run.eps, run.log = traffic, eps, logging.getLogger("test")
    run.id, run.endpoint, run.stage = promo["id"], "shop", "cand"
    run.policy = PolicySpec.model_validate(promo["policy"])
    run.share = lambda weight=0, shadow=0, note="": traffic.set_share("shop", "cand", weight, shadow, note)
    run.share(10)
    return run


@pytest.mark.parametrize("on_failure,status", [("rollback", "ROLLED BACK"), ("pause", "PAUSED")])
def test_a_failed_gate_zeroes_the_weight_and_rolls_back_or_pauses(shop, on_failure, status):
    eps, traffic = shop
    run = _run(traffic, eps, on_failure)
    run.fail(Judgement("live", False, {"requests": 40, "error_rate": 0.2}, "error rate 0.2000 over 40 requests"))
    (promo,) = traffic.promotions("shop")
    cand = next(s for s in eps.get("shop")["stages"] if s["name"] == "cand")
    assert promo["status"] == status and promo["gates"][-1]["measured"]["error_rate"] == 0.2
    assert cand["weight"] == 0 and cand["reason"] == "rolled back by the live gate: error rate 0.2000 over 40 requests"
    if on_failure == "pause":  # held for a person: still in progress, at its step; a resume starts a new run
        assert traffic.active("shop")["step"] == 0
        assert orphaned(traffic.update(promo["id"], flow_run_id=None))
    else:
        assert traffic.active("shop") is None


def test_a_held_steps_automatic_pause_after_a_persons_abort_leaves_it_aborted(shop, monkeypatch):
    """A step waits past max_wait_seconds and pauses itself, while a person aborts the promotion between the
    run's last look at its status and that pause: the pause is refused (the promotion already ended), the
    step ends "aborted" and the promotion stays ABORTED. The person's abort is committed right before the
    run's own pause reaches the catalog, so the interleaving is exact, not timed."""
    import mlyard.flows.endpoint_rollout as rollout

    eps, traffic = shop
    run = _run(traffic, eps, "rollback")
    run.policy = PolicySpec(steps=[10, 100], step_seconds=60, max_wait_seconds=1)
    monkeypatch.setattr(rollout, "TICK", 0.05)
    looks: list[str] = []

    class AbortedBeforeThePause(Traffic):
        def heartbeat(self, promotion_id: int) -> str:
            looks.append(status := super().heartbeat(promotion_id))
            if status == "PAUSED":  # the run's pause went through: fail here rather than hold for a resume
                raise AssertionError("the automatic pause of an aborted promotion was not refused")
            return status

        def update(self, promotion_id: int, **fields):
            if fields.get("status") == "PAUSED":  # the person's abort lands first
                super().update(promotion_id, status="ABORTED", reason="a person aborted it")
            return super().update(promotion_id, **fields)

    run.traffic = AbortedBeforeThePause(traffic.catalog)
    outcome, _ = run.hold(60, None)
    (promo,) = traffic.promotions("shop")
    assert outcome == "aborted" and set(looks) == {"RUNNING"}, looks
    assert promo["status"] == "ABORTED" and promo["reason"] == "a person aborted it"
