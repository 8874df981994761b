"""Safe promotion (DESIGN §8): traffic shares between an endpoint's stages, and the policy a progressive
promotion follows. Pure pydantic: a bad spec fails here, naming the field, before anything starts.

A stage other than the default can take a `weight` (percent of the endpoint's default traffic, answered
by it) or a `shadow` share (percent of that traffic mirrored to it; clients never wait for it and never
see its answer). A policy moves a candidate stage through `steps` of weight, each held `step_seconds`,
behind three gates: the evaluation gate (candidate against the default on one labelled dataset, before
any traffic moves), the shadow gate (agreement of mirrored answers) and the live gate (error rate and p99
of the candidate's own requests, judged per step past a minimum request count: too few requests means
wait, never fail). A failed gate rolls back (weight 0) or pauses, as `on_failure` says.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlyard.core.specs.common import NAME_PATTERN, SpecModel, check_uri

# The evaluation flow's metrics (tasks/evaluation.py), by task, and those where less is better.
CLASSIFICATION_METRICS = ("accuracy", "f1", "f1_macro", "f1_weighted", "precision", "recall", "log_loss", "roc_auc",
                          "pr_auc")
REGRESSION_METRICS = ("mae", "rmse", "r2", "mape", "rmsle")
LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse", "mape", "rmsle"})
PROMOTION_STATUSES = ("RUNNING", "PAUSED", "COMPLETE", "ROLLED BACK", "ABORTED", "FAILED")
ACTIVE_PROMOTION = ("RUNNING", "PAUSED")


class TrafficSpec(SpecModel):
    """A stage's share of its endpoint's default traffic (`set-endpoint-traffic`)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(pattern=NAME_PATTERN, description="The endpoint.")
    stage: str = Field(pattern=NAME_PATTERN, description="An ACTIVE stage other than the default.")
    weight: int | None = Field(default=None, ge=0, le=99, description="Percent of the default traffic this stage "
                               "answers (0-99; the default stage answers the rest). Unset: unchanged.")
    shadow: int | None = Field(default=None, ge=0, le=100, description="Percent of the default traffic mirrored to "
                               "this stage, whose answers are compared and never returned. Unset: unchanged.")
    note: str = Field(default="", max_length=500, description="Why (kept in the serving history).")

    @model_validator(mode="after")
    def _something(self) -> "TrafficSpec":
        if self.weight is None and self.shadow is None:
            raise ValueError("give weight (1-99, 0 to stop) or shadow (1-100, 0 to stop)")
        if (self.weight or 0) > 0 and (self.shadow or 0) > 0:
            raise ValueError("a stage takes either a weight or a shadow share, not both at once")
        return self


class EvaluationGate(SpecModel):
    """Before any traffic moves: the candidate and the current default evaluated on the same labelled data
    (the evaluation flow, once each); the candidate must not be worse by more than `min_delta`."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Labelled data: a .csv or .jsonl file or folder (local path, s3://, nas://).")
    metric: str = Field(description="The metric compared: " + ", ".join(CLASSIFICATION_METRICS + REGRESSION_METRICS)
                        + " (" + ", ".join(sorted(LOWER_IS_BETTER)) + ": lower is better).")
    min_delta: float = Field(default=0.0, description="How much better the candidate must be (0: at least as good; "
                             "negative: worse by at most that much).")
    label_field: str = Field(default="label", min_length=1, description="The field holding the ground truth.")
    input_format: Literal["csv", "jsonl"] | None = Field(default=None, description="csv or jsonl (default: from the "
                                                         "file name).")
    # what an evaluation takes to read its data (core/specs/evaluation.py), so that the same file serves both
    id_field: str | None = Field(default=None, description="Input field that identifies a row (never fed to the "
                                 "model), e.g. id.")
    feature_fields: list[str] | None = Field(
        default=None, description="Input fields fed to the model, in order (default: every field but the id and "
        "label). A single field holding a list is used as the feature vector.")
    drop_fields: list[str] = Field(default_factory=list, description="Input fields never fed to the model, e.g. comment.")

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
            raise ValueError(f"unknown metric {value!r}; one of {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        check_uri("dataset", value)
        return value

    @property
    def task(self) -> str:
        return "classification" if self.metric in CLASSIFICATION_METRICS else "regression"

    @property
    def format(self) -> str:
        if self.input_format:
            return self.input_format
        return "jsonl" if self.dataset.rstrip("/").endswith(".jsonl") else "csv"

    def better(self, candidate: float, default: float) -> bool:
        """Whether the candidate passes: better than the default by at least min_delta."""
        if self.metric in LOWER_IS_BETTER:
            return default - candidate >= self.min_delta
        return candidate - default >= self.min_delta


class LiveGate(SpecModel):
    """Per step, from the gateway's own counts of the candidate's requests since the step began."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float | None = Field(default=None, ge=0, le=1, description="Most answers of 500 or above, as a "
                                         "fraction of the candidate's requests (0.01: 1 %).")
    max_p99_ms: float | None = Field(default=None, gt=0, description="Highest p99 latency (ms, at the gateway).")
    min_requests: int = Field(default=100, ge=1, le=10_000_000, description="Requests the candidate must have "
                              "answered in a step before it is judged; fewer means wait, never fail.")

    @model_validator(mode="after")
    def _one(self) -> "LiveGate":
        if self.max_error_rate is None and self.max_p99_ms is None:
            raise ValueError("a live gate needs max_error_rate, max_p99_ms or both")
        return self


class ShadowGate(SpecModel):
    """Before the first step: `share` % of the default traffic mirrored to the candidate for one step;
    its answers must agree with the default's (same label; numbers within `tolerance`)."""

    model_config = ConfigDict(extra="forbid")

    min_agreement: float = Field(ge=0, le=1, description="Least fraction of mirrored requests whose answers agree.")
    share: int = Field(default=20, ge=1, le=100, description="Percent of the default traffic mirrored.")
    min_pairs: int = Field(default=100, ge=1, le=10_000_000, description="Compared pairs needed before judging.")
    tolerance: float = Field(default=1e-6, ge=0, description="Numbers agree within tolerance x max(1, |default's|).")


class Gates(SpecModel):
    model_config = ConfigDict(extra="forbid")

    evaluation: EvaluationGate | None = Field(default=None, description="Candidate against the default, offline.")
    live: LiveGate | None = Field(default=None, description="Error rate and p99 of the candidate's requests.")
    shadow: ShadowGate | None = Field(default=None, description="Agreement of mirrored answers.")


class PolicySpec(SpecModel):
    """A progressive promotion's policy, kept on the endpoint (`mlyard endpoints policy ENDPOINT -f`)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(default=[5, 25, 50, 100], min_length=1, max_length=20,
                             description="Percent of the default traffic the candidate answers at each step, rising; "
                             "the last is 100: the candidate becomes the default.")
    step_seconds: int = Field(default=300, ge=1, le=86_400, description="How long each step is held and judged.")
    max_wait_seconds: int | None = Field(default=None, ge=1, le=7 * 86_400, description="How long a step may wait "
                                         "for enough requests before the promotion pauses (default: 10 steps).")
    gates: Gates = Field(default_factory=Gates, description="evaluation, live and shadow (each optional).")
    on_failure: Literal["rollback", "pause"] = Field(default="rollback", description="rollback: the candidate's "
                                                     "weight goes to 0 at once; pause: it holds for a person.")
    keep_old: bool = Field(default=False, description="Keep the old default stage after the promotion "
                           "(otherwise it drains and is deleted).")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps):
            raise ValueError(f"each step is a percent from 1 to 100 (got {steps})")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must rise (got {steps})")
        if steps[-1] != 100:
            raise ValueError(f"the last step is 100: the candidate then becomes the default (got {steps})")
        return steps

    @property
    def wait_limit(self) -> int:
        return self.max_wait_seconds or 10 * self.step_seconds


class RolloutSpec(SpecModel):
    """Promote a stage step by step (`promote-progressively`), or go on with the promotion in progress."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(pattern=NAME_PATTERN, description="The endpoint.")
    stage: str = Field(pattern=NAME_PATTERN, description="The candidate: an ACTIVE stage other than the default.")
    policy: PolicySpec | None = Field(default=None, description="The policy (default: the endpoint's own).")
    resume: bool = Field(default=False, description="Go on with this stage's promotion in progress, at its step.")


class PromotionControlSpec(SpecModel):
    """Pause, resume or abort the promotion in progress on an endpoint (`control-promotion`)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(pattern=NAME_PATTERN, description="The endpoint.")
    action: Literal["pause", "resume", "abort"] = Field(description="pause: hold the current weight; resume: go "
                                                        "on (a new run if its run ended); abort: weight 0, ended.")
