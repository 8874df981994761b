"""Promote a stage step by step behind gates (promote-progressively), and pause, resume or abort the
promotion (control-promotion). The policy's fields: core/specs/promotion.py.

1. Start the promotion, or take up the one in progress at its phase and step (`resume`). Its policy
   is the endpoint's; a policy given with the run becomes the endpoint's.
2. Evaluation gate: the candidate's and the default's model versions evaluated on the same labelled
   data (the evaluation flow, as subflows), before any traffic moves; a worse candidate gets none.
3. Shadow gate: the shadow share mirrored to the candidate until enough answers were compared.
4. Steps: each step's weight, held `step_seconds`, the live gate judged every half second on the
   candidate's own requests since the step began. Too few requests means wait; past `max_wait_seconds`
   the promotion pauses for a person.
5. The last step (100): the candidate becomes the default (promote-endpoint-stage, as a subflow).

A failed gate sets the candidate's weight and shadow to 0 at once, writes the gate and its measured
value on the stage, and ends the promotion ROLLED BACK (PAUSED with `on_failure: pause`). So does a run
that fails without a verdict (a gate that could not be judged), with the error as the reason; a run that
is killed is taken up by a new one at its step (tasks/promotion_watch.py). A person's pause holds the
current weight; abort sets it to 0.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from mlyard.core.connection import gateway_url
from mlyard.core.errors import NotFound, Protected, SpecError
from mlyard.core.names import FLOW_CONTROL_PROMOTION, FLOW_ROLLOUT, deployment
from mlyard.core.settings import in_kubernetes_pod
from mlyard.core.specs.endpoint import PromotionSpec
from mlyard.core.specs.evaluation import EvaluationSpec
from mlyard.core.specs.promotion import EvaluationGate, PolicySpec, PromotionControlSpec, RolloutSpec
from mlyard.flows.endpoint import EndpointResult, with_urls
from mlyard.flows.endpoint_promote import promote_stage
from mlyard.flows.evaluation import evaluate
from mlyard.flows.platform import Platform
from mlyard.registry.endpoints import Endpoints
from mlyard.registry.traffic import Traffic, orphaned
from mlyard.serving.traffic import Judgement, judge_live, judge_shadow, since
from mlyard.tasks.endpoints import gateway
from mlyard.tasks.orchestration import run_name, submit
from mlyard.tasks.promotion_watch import roll_back

TICK = 0.5  # seconds between two looks at the counts and the promotion's status


class PromotionResult(BaseModel):
    promotion: dict[str, Any] = Field(description="The promotion: status, phase, step, each gate's judgement.")
    endpoint: EndpointResult = Field(description="The endpoint after it, with its URLs.")


class _Run:
    """One promotion as its run moves it: the catalog, the gateway and the log."""

    def __init__(self, p: Platform, promo: dict[str, Any]):
        self.p, self.traffic, self.eps = p, Traffic(p.catalog), Endpoints(p.catalog)
        self.gw, self.log = gateway_url(p.settings), get_run_logger()
        self.id, self.endpoint, self.stage = promo["id"], promo["endpoint"], promo["stage"]
        self.policy = PolicySpec.model_validate(promo["policy"])

    def share(self, weight: int = 0, shadow: int = 0, note: str = "") -> None:
        self.traffic.set_share(self.endpoint, self.stage, weight, shadow, note)
        gateway(self.gw, "/mlyard/reload", "POST")  # this gateway at once; other replicas within a second

    def hold(self, seconds: float, judge: Callable[[dict[str, Any]], Judgement] | None) -> tuple[str, Judgement | None]:
        """Hold the current share for `seconds`, judging the candidate's counts since now: ("passed" |
        "failed" | "aborted", the last judgement). A pause (a person's, or too few requests for too long)
        holds until resumed, then the window starts again."""
        start, began, last = self.traffic.read_counts(self.endpoint, self.stage), time.monotonic(), None
        while True:
            status = self.traffic.heartbeat(self.id)
            if status == "ABORTED":
                return "aborted", last
            if status == "PAUSED":
                time.sleep(TICK)
                if self.traffic.heartbeat(self.id) == "RUNNING":
                    self.log.info("resumed: the step's window starts again")
                    start, began = self.traffic.read_counts(self.endpoint, self.stage), time.monotonic()
                continue
            if judge is not None:
                last = judge(since(self.traffic.read_counts(self.endpoint, self.stage), start))
                if last.passed is False:
                    return "failed", last
            waited = time.monotonic() - began
            if waited >= seconds and (last is None or last.passed):
                return "passed", last
            if waited >= self.policy.wait_limit:
                why = f"paused: {last.why if last else 'no judgement'} after {int(waited)} s (max_wait_seconds)"
                self.log.warning(why)
                try:
                    self.traffic.update(self.id, status="PAUSED", reason=why)
                except Protected:  # a person aborted it in between
                    return "aborted", last
                continue
            time.sleep(TICK)

    def fail(self, j: Judgement) -> None:
        """Roll back: weight and shadow 0 now, the gate and its value on the stage and in the promotion."""
        self.share(0, 0, f"rolled back by the {j.gate} gate: {j.why}")
        self.traffic.mark_stage(self.endpoint, self.stage, f"rolled back by the {j.gate} gate: {j.why}")
        status = "ROLLED BACK" if self.policy.on_failure == "rollback" else "PAUSED"
        self.traffic.update(self.id, status=status, reason=f"{j.gate} gate failed: {j.why}", gate=j.as_dict())
        self.log.error("%s/%s %s: the %s gate failed: %s", self.endpoint, self.stage, status, j.gate, j.why)

    @contextmanager
    def beating(self) -> Iterator[None]:
        """The promotion's heartbeat every TICK while this run works on something long (an evaluation gate's
        two evaluations): else the promotion watch, after STALE_SECONDS of silence, takes it for orphaned."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(TICK):
                try:
                    self.traffic.heartbeat(self.id)
                except Exception:  # noqa: BLE001 - the catalog away a moment: the next beat tries again
                    continue

        beater = threading.Thread(target=beat, name=f"promotion-{self.id}-heartbeat", daemon=True)
        beater.start()
        try:
            yield
        finally:
            stop.set()
            beater.join()

    def evaluation(self, gate: EvaluationGate) -> Judgement:
        """Step 2: each model both stages serve, evaluated in both versions on the gate's data."""
        view = self.eps.get(self.endpoint)
        versions = {st["name"] if not st["default"] else "": {r["model"].rsplit("/", 1)[0]: r["model"]
                                                              for r in st["resources"]} for st in view["stages"]}
        candidate, default = versions[self.stage], versions[""]
        measured: dict[str, Any] = {}
        passed = True
        for name in sorted(set(candidate) & set(default)):
            values: dict[str, float] = {}
            runs: dict[str, str] = {}
            for who, ref in (("candidate", candidate[name]), ("default", default[name])):
                out = self.p.settings.home_dir / "promotions" / str(self.id) / f"{who}-{name}"
                result = evaluate(EvaluationSpec(
                    name=f"gate-{self.id}-{who}", experiment="promotions", task=gate.task, model=ref,
                    input_uri=gate.dataset, input_format=gate.format, label_field=gate.label_field,
                    id_field=gate.id_field, feature_fields=gate.feature_fields, drop_fields=gate.drop_fields,
                    output_uri=str(out)))
                if gate.metric not in result.metrics:
                    why = result.not_applicable.get(gate.metric, "not computed")
                    return Judgement("evaluation", False, measured, f"{gate.metric} of {ref}: {why}")
                values[who] = result.metrics[gate.metric]
                runs[who] = result.run_id
            measured[name] = {"candidate": values["candidate"], "default": values["default"],
                              "models": [candidate[name], default[name]],
                              "mlflow_runs": [runs["candidate"], runs["default"]]}
            passed = passed and gate.better(values["candidate"], values["default"])
        if not measured:
            return Judgement("evaluation", False, measured, "the stages serve no model in common")
        said = "; ".join(f"{gate.metric} {m['candidate']:.4f} ({m['models'][0]}) against {m['default']:.4f} "
                         f"({m['models'][1]})" for m in measured.values())
        return Judgement("evaluation", passed, measured, said + ("" if passed else f", min_delta {gate.min_delta}"))


def _start(p: Platform, spec: RolloutSpec, run_id: str | None) -> dict[str, Any]:
    traffic = Traffic(p.catalog)
    if spec.resume:
        promo = traffic.active(spec.endpoint)
        if promo is None or promo["stage"] != spec.stage:
            raise NotFound(f"promotion of {spec.endpoint}/{spec.stage} in progress")
        return traffic.update(promo["id"], status="RUNNING", reason="", flow_run_id=run_id)
    policy = spec.policy or traffic.policy(spec.endpoint)
    if policy is None:
        raise SpecError("policy", None, f"a promotion policy: set one with `mlyard endpoints policy {spec.endpoint} "
                        "-f policy.yaml`, or give it with the run")
    if spec.policy is not None:
        traffic.set_policy(spec.endpoint, spec.policy)
    return traffic.start(spec.endpoint, spec.stage, policy, run_id)


@flow(name=FLOW_ROLLOUT, flow_run_name=run_name(FLOW_ROLLOUT),
      description="Promote a stage step by step: evaluation, shadow and live gates; rolls back on its own.")
def promote_progressively(spec: RolloutSpec) -> PromotionResult:
    p = Platform()
    # 1. Start the promotion, or take up the one in progress.
    promo = _start(p, spec, str(flow_run.get_id() or "") or None)
    run = _Run(p, promo)
    policy, gates = run.policy, run.policy.gates
    try:
        # 2. The evaluation gate, before any traffic moves.
        if promo["phase"] == "evaluation":
            if gates.evaluation is not None:
                with run.beating():  # two evaluations can take longer than the watch's patience
                    j = run.evaluation(gates.evaluation)
                if not j.passed:
                    run.fail(j)
                    return _result(run)
                run.log.info("evaluation gate passed: %s", j.why)
                promo = run.traffic.update(run.id, gate=j.as_dict())
            promo = run.traffic.update(run.id, phase="shadow")
        # 3. The shadow gate.
        if promo["phase"] == "shadow":
            if gates.shadow is not None:
                g = gates.shadow
                run.share(0, g.share, f"promotion {run.id}: shadow {g.share}%")
                outcome, j = run.hold(policy.step_seconds, lambda c: judge_shadow(c, g.min_agreement, g.min_pairs))
                if outcome != "passed" or j is None:
                    return _ended(run, outcome, j)
                run.log.info("shadow gate passed: %s", j.why)
                run.share(0, 0, f"promotion {run.id}: shadow gate passed")
                run.traffic.update(run.id, gate=j.as_dict())
            promo = run.traffic.update(run.id, phase="steps", step=0)
        # 4. The steps, each held and judged.
        live = gates.live
        for i in range(promo["step"], len(policy.steps)):
            weight = policy.steps[i]
            run.traffic.update(run.id, step=i)
            if weight == 100:
                break
            run.share(weight, 0, f"promotion {run.id}: step {i + 1} of {len(policy.steps)}")
            run.log.info("step %d: %s/%s answers %d%% of the default traffic", i + 1, run.endpoint, run.stage, weight)
            judge = (lambda c: judge_live(c, live.max_error_rate, live.max_p99_ms, live.min_requests)) if live else None
            outcome, j = run.hold(policy.step_seconds, judge)
            if outcome != "passed":
                return _ended(run, outcome, j)
            if j is not None:
                run.traffic.update(run.id, gate={**j.as_dict(), "step": i + 1, "weight": weight})
        # 5. The candidate becomes the default.
        promote_stage(PromotionSpec(endpoint=run.endpoint, stage=run.stage, keep_old=policy.keep_old))
        run.traffic.update(run.id, status="COMPLETE", phase="done", reason="")
        run.log.info("%s/%s is the default stage", run.endpoint, run.stage)
        return _result(run)
    except Exception as exc:  # a gate that could not be judged (an evaluation that failed, ...): no verdict
        left = run.traffic.active(run.endpoint)
        if left is not None and left["id"] == run.id and left["status"] == "RUNNING":
            why = f"its run failed in the {left['phase']} phase: {type(exc).__name__}: {exc}"[:2000]
            try:
                ended = roll_back(run.traffic, left, why)
                gateway(run.gw, "/mlyard/reload", "POST")
                run.log.error("%s/%s %s: %s", run.endpoint, run.stage, ended, why)
            except (NotFound, Protected):  # its stage deleted, or a person ended it meanwhile
                pass
        raise


def _ended(run: _Run, outcome: str, j: Judgement | None) -> PromotionResult:
    if outcome == "failed" and j is not None:
        run.fail(j)
    elif outcome == "aborted":
        try:
            run.share(0, 0, f"promotion {run.id} aborted")
        except NotFound:  # its stage was deleted (which aborted it)
            return PromotionResult(promotion=next(x for x in run.traffic.promotions(run.endpoint) if x["id"] == run.id),
                                   endpoint=with_urls(run.p, run.eps, run.endpoint))
        run.log.warning("%s/%s: the promotion was aborted; its weight is 0", run.endpoint, run.stage)
    return _result(run)


def _result(run: _Run) -> PromotionResult:
    """The promotion as it ended (or paused), also as a Prefect artifact of the run: its gates in a table."""
    from prefect.artifacts import create_markdown_artifact

    promo = next(x for x in run.traffic.promotions(run.endpoint) if x["id"] == run.id)
    lines = [f"**{promo['endpoint']}/{promo['stage']}: {promo['status']}** (steps {promo['steps']})", "",
             "| gate | step | verdict | measured |", "|---|---|---|---|"]
    for g in promo["gates"]:
        verdict = {True: "passed", False: "FAILED", None: "waiting"}[g["passed"]]
        lines.append(f"| {g['gate']} | {g.get('weight', '')} | {verdict} | {g['why']} |")
    if promo["reason"]:
        lines += ["", promo["reason"]]
    if flow_run.get_id():
        create_markdown_artifact("\n".join(lines), key=f"promotion-{promo['endpoint']}",
                                 description="The promotion's gates, as `mlyard endpoints rollout show` gives them.")
    return PromotionResult(promotion=promo, endpoint=with_urls(run.p, run.eps, run.endpoint))


def _ended_run(flow_run_id: str | None) -> bool:
    """Whether the promotion's flow run is over in Prefect (cancelled from the UI, crashed, ...)."""
    from uuid import UUID

    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    if flow_run_id is None:
        return True
    with get_client(sync_client=True) as client:
        try:
            fr = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            return True
    return fr.state is None or fr.state.is_final()


@flow(name=FLOW_CONTROL_PROMOTION, flow_run_name=run_name(FLOW_CONTROL_PROMOTION),
      description="Pause (hold the weight), resume (a new run if its run ended) or abort (weight 0) a promotion.")
def control_promotion(spec: PromotionControlSpec) -> dict[str, Any]:
    """1. Find the promotion in progress. 2. Pause, resume or abort it. 3. On resume, start a run for it if
    its own run ended (the stack restarted, or it paused on a failed gate)."""
    p = Platform()
    traffic = Traffic(p.catalog)
    # 1. The promotion in progress.
    promo = traffic.active(spec.endpoint)
    if promo is None:
        raise Protected(f"endpoint {spec.endpoint} has no promotion in progress (see `mlyard endpoints rollout show "
                        f"{spec.endpoint}`)")
    # 2. The action.
    if spec.action == "pause":
        return traffic.update(promo["id"], status="PAUSED", reason="paused by a person")
    if spec.action == "abort":
        promo = traffic.update(promo["id"], status="ABORTED", reason="aborted by a person")
        try:
            traffic.set_share(spec.endpoint, promo["stage"], 0, 0, f"promotion {promo['id']} aborted")
        except NotFound:  # the stage was deleted under it: nothing to take traffic from
            pass
        gateway(gateway_url(p.settings), "/mlyard/reload", "POST")
        return promo
    # 3. A run for it, if it has none: made while the promotion still waits (PAUSED), then RUNNING with the new
    # run's id in one write, so the promotion watch never reads it RUNNING with its ended run
    if not (orphaned(promo) or _ended_run(promo["flow_run_id"])):
        return traffic.update(promo["id"], status="RUNNING", reason="")
    if promo["status"] == "RUNNING" and not traffic.claim_orphan(promo):  # the promotion watch took it up meanwhile
        return traffic.active(spec.endpoint) or promo
    pool = "kubernetes" if in_kubernetes_pod() else "local"
    fr = submit(deployment(FLOW_ROLLOUT, pool), {"spec": RolloutSpec(endpoint=spec.endpoint, stage=promo["stage"],
                                                                resume=True).model_dump(mode="json")})
    promo = traffic.update(promo["id"], status="RUNNING", reason="", flow_run_id=str(fr.id))
    get_run_logger().info("started %s to go on with the promotion", fr.name)
    return promo
