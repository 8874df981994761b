"""The catalog's tables of teams (DESIGN §15): users, their API keys, projects and their members' roles,
and the append-only audit trail. Declared on the catalog's one Base (registry/tables.py); owned by
migration 0015."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mlyard.registry.tables import Base, utcnow


class User(Base):
    """A person (or a CI robot) who signs in with an API key; an admin may do everything everywhere."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(80), default="")


class ApiKey(Base):
    """One of a user's keys: its id (shown), the SHA-256 of its secret (core/access.py), when it expires, when
    it was last used and revoked."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Project(Base):
    """A project: what its members make belongs to it, and its quota bounds what its runs use at once."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: no limit
    cpus: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_runs: Mapped[int | None] = mapped_column(Integer, nullable=True)  # concurrent runs
    rate_limit: Mapped[float | None] = mapped_column(Float, nullable=True)  # requests/s to its endpoints, all callers
    key_rate_limit: Mapped[float | None] = mapped_column(Float, nullable=True)  # requests/s of one key or token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProjectMember(Base):
    __tablename__ = "project_members"

    project: Mapped[str] = mapped_column(ForeignKey("projects.name", ondelete="CASCADE"), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRecord(Base):
    """One action that created, changed, started, stopped, promoted, deleted or granted something: who, in
    which project, what, on which resource, the result, from where. Rows are only ever added."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_project_at", "project", "at"), Index("ix_audit_user_at", "user", "at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    user: Mapped[str] = mapped_column(String(80))
    project: Mapped[str | None] = mapped_column(String(40), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[str] = mapped_column(String(16))  # ok, refused, failed
    detail: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(80), default="")
