"""The catalog's tables: long-lived resources MLflow does not know, declared for SQLAlchemy 2.

Each table holds references (model name and version, run ids), never copies of engine state. The
schema is owned by the Alembic migrations in `registry/migrations` (registry/catalog.py opens and
upgrades a database); a change here comes with a migration there.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class TrainingTemplate(Base):
    __tablename__ = "training_templates"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Endpoint(Base):
    """An endpoint: a name, open to the public or token-protected, and its stages (one the default)."""

    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    max_request_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: the platform's limit
    status: Mapped[str] = mapped_column(String(32), default="CREATE REQUESTED")
    reason: Mapped[str] = mapped_column(Text, default="")
    # the progressive promotion's policy (core/specs/promotion.py), as the user gave it; None: none set
    promotion_policy: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    caller_budgets: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # "rag:NAME" -> tokens a day
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stages: Mapped[list["EndpointStage"]] = relationship(back_populates="endpoint", cascade="all, delete-orphan",
                                                         order_by="EndpointStage.id")
    tokens: Mapped[list["EndpointToken"]] = relationship(cascade="all, delete-orphan", order_by="EndpointToken.id")


class EndpointStage(Base):
    """A stage of an endpoint: where its resources run (instance type and count, node autoscaler)."""

    __tablename__ = "endpoint_stages"
    __table_args__ = (UniqueConstraint("endpoint_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(50))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    instance_type: Mapped[str] = mapped_column(String(64), default="local")
    instance_count: Mapped[int] = mapped_column(Integer, default=1)
    node_autoscaler: Mapped[dict] = mapped_column(JSON, default=dict)
    autoscaling_rules: Mapped[list] = mapped_column(JSON, default=list)
    max_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weight: Mapped[int] = mapped_column(Integer, default=0)  # percent of the endpoint's default traffic it answers
    shadow: Mapped[int] = mapped_column(Integer, default=0)  # percent of that traffic mirrored to it, never answered
    status: Mapped[str] = mapped_column(String(32), default="CREATE REQUESTED")
    gateway_status: Mapped[str] = mapped_column(String(40), default="CREATE IN PROGRESS")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    endpoint: Mapped[Endpoint] = relationship(back_populates="stages")
    resources: Mapped[list["StageResource"]] = relationship(back_populates="stage", cascade="all, delete-orphan",
                                                            order_by="StageResource.id")


class StageResource(Base):
    """One model version a stage serves, with its allocation, pods and pod autoscaler."""

    __tablename__ = "stage_resources"

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("endpoint_stages.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    cpu: Mapped[float] = mapped_column(Float, default=1.0)
    memory: Mapped[str] = mapped_column(String(16), default="1Gi")
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    pods: Mapped[int] = mapped_column(Integer, default=1)
    pod_autoscaler: Mapped[dict] = mapped_column(JSON, default=dict)
    runtime: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # RuntimeSpec; None: mlyard's own server
    # on a cluster, where the gateway reaches it (its Service) once it is routed; None: not routed there
    service_url: Mapped[str | None] = mapped_column(String(512), nullable=True, default=None)
    status: Mapped[str] = mapped_column(String(32), default="CREATE REQUESTED")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    stage: Mapped[EndpointStage] = relationship(back_populates="resources")


class EndpointToken(Base):
    """A token of a token-protected endpoint, kept as its SHA-256 digest (the token itself is shown once)."""

    __tablename__ = "endpoint_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    daily_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: no budget


class ServingHistory(Base):
    """Which model version served which stage, from when to when: names, not keys, so the record
    outlives the endpoint, the stage and the model."""

    __tablename__ = "serving_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(50))
    stage: Mapped[str] = mapped_column(String(50))
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    # percent of the endpoint's default traffic this record served (None: only the stage's own URL), and
    # the percent mirrored to it as a shadow
    share: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shadow: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Schedule(Base):
    """A schedule (its spec as given) and the scheduler's bookkeeping: every fire time up to
    `watermark_epoch` has been considered, and `missed` slots were left out by the catch-up policy."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    owner: Mapped[str] = mapped_column(String(80), default="", server_default="")  # who made it: its runs are theirs
    name: Mapped[str] = mapped_column(String(50), unique=True)
    spec: Mapped[dict] = mapped_column(JSON)
    deployment_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="CREATE REQUESTED")
    reason: Mapped[str] = mapped_column(Text, default="")
    watermark_epoch: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    missed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    slots: Mapped[list["ScheduleSlot"]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class ScheduleSlot(Base):
    """One fire time of a schedule: at most one row, so at most one run, per (schedule, slot time).

    WAITING (due, not started: the concurrency limit), STARTED (its flow run exists and had not
    ended when last looked at), ENDED, SKIPPED (due while the limit was reached, when_busy=skip)."""

    __tablename__ = "schedule_slots"
    __table_args__ = (UniqueConstraint("schedule_id", "slot_epoch"), Index("ix_schedule_slots_state", "schedule_id",
                                                                           "state"))

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    slot_epoch: Mapped[int] = mapped_column(BigInteger)  # the slot's instant, whole seconds since the epoch (UTC)
    state: Mapped[str] = mapped_column(String(16), default="WAITING")
    flow_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    due_at: Mapped[float] = mapped_column(Float)  # when the scheduler recorded it (epoch seconds)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # when its flow run was created


class Pipeline(Base):
    """An uploaded pipeline: its compiled IR YAML as given (KFP's own format), its name and status."""

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    pipeline_name: Mapped[str] = mapped_column(String(255))  # pipelineInfo.name inside the YAML
    status: Mapped[str] = mapped_column(String(32), default="CREATE REQUESTED")
    reason: Mapped[str] = mapped_column(Text, default="")
    yaml_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EndpointStatMinute(Base):
    """One minute of one gateway replica's counts for an (endpoint, stage, model): what `mlyard endpoints
    stats` merges over a period, whichever replica answered (serving/endpoint_stats.py)."""

    __tablename__ = "endpoint_stat_minutes"
    __table_args__ = (Index("ix_endpoint_stat_minutes_minute", "minute", "endpoint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    minute: Mapped[int] = mapped_column(BigInteger)  # epoch seconds // 60
    endpoint: Mapped[str] = mapped_column(String(255))
    stage: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    counts: Mapped[dict] = mapped_column(JSON)  # calls, failures, latency_sum, hist, classes


class RegistryAccount(Base):
    """A login to a container registry. The password is never here: it lives in the Secret named
    `secret_name` (a private file on one machine, a kubernetes.io/dockerconfigjson Secret on a cluster),
    re-made whenever the user or password changes (`credentials_version` counts those changes)."""

    __tablename__ = "registry_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    registry_host: Mapped[str] = mapped_column("registry", String(253))  # `registry` is reserved by SQLAlchemy
    username: Mapped[str] = mapped_column(String(255))
    secret_name: Mapped[str] = mapped_column(String(63), unique=True)
    credentials_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    """A private image: its address, kind (notebook or training) and the account pods pull it with."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("registry_accounts.id", ondelete="RESTRICT"),
                                                   nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    account: Mapped[RegistryAccount | None] = relationship()


class Rag(Base):
    """A RAG: its spec as given (secrets are never in it: a vector store password or an LLM key is
    named by the setting or environment variable that holds it), its status, and the deploy state of
    its query route. Its documents and vectors live in its vector store, not here."""

    __tablename__ = "rags"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32), default="CREATE REQUESTED")
    reason: Mapped[str] = mapped_column(Text, default="")
    deploy_status: Mapped[str] = mapped_column(String(16), default="")  # DEPLOYING, COMPLETE, FAILURE
    # on a cluster, where the gateway reaches its query service (and the query service its own LLM): {"query": URL}
    service_urls: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ingestions: Mapped[list["RagIngestion"]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class RagIngestion(Base):
    """One ingestion (the first one, or a sync) of a RAG: its Prefect flow run, what it counted, the
    files it skipped and why, and how it ended."""

    __tablename__ = "rag_ingestions"

    id: Mapped[int] = mapped_column(primary_key=True)
    rag_id: Mapped[int] = mapped_column(ForeignKey("rags.id", ondelete="CASCADE"), index=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="RUNNING")  # RUNNING, COMPLETE, FAILED
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    skipped: Mapped[list] = mapped_column(JSON, default=list)
    reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Notebook(Base):
    """A notebook: its spec (the instance type changes while it is stopped; storage sizes never), its
    stored status (ACTIVE is shown HEALTHY or UNHEALTHY from a probe, never stored so) and why the last
    action failed. Its files live under its storage, its process with the replica supervisor."""

    __tablename__ = "notebooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(String(40), default="default", server_default="default", index=True)
    owner: Mapped[str] = mapped_column(String(80), default="", server_default="")  # its JupyterLab answers them alone
    name: Mapped[str] = mapped_column(String(50), unique=True)
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32), default="CREATE REQUESTED")
    reason: Mapped[str] = mapped_column(Text, default="")
    flow_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)  # the last action's run
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Promotion(Base):
    """A progressive promotion of a stage (flows/endpoint_rollout.py): its policy as it started, where it
    is (phase, step), each gate's result, and the flow run moving it."""

    __tablename__ = "promotions"
    __table_args__ = (Index("ix_promotions_endpoint", "endpoint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(50))
    stage: Mapped[str] = mapped_column(String(50))
    policy: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer, default=0)  # index into policy.steps
    phase: Mapped[str] = mapped_column(String(32), default="evaluation")  # evaluation, shadow, steps, done
    gates: Mapped[list] = mapped_column(JSON, default=list)  # each gate's judgement, in order
    reason: Mapped[str] = mapped_column(Text, default="")
    flow_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resumes: Mapped[int] = mapped_column(Integer, default=0)  # new runs after its own ended without a verdict
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LiveCount(Base):
    """One gateway replica's running totals for a stage that shares traffic (serving/traffic.py): what
    the live and shadow gates take differences of, whichever replica answered."""

    __tablename__ = "live_counts"
    __table_args__ = (UniqueConstraint("gateway", "endpoint", "stage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    gateway: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(255))
    stage: Mapped[str] = mapped_column(String(255))
    counts: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)

