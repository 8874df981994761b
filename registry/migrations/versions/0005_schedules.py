"""Schedules (their spec, the scheduler's watermark and count of slots left out by the catch-up
policy) and their slots: one row per (schedule, slot time), so that a slot can never make two runs.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("deployment_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("watermark_epoch", sa.BigInteger, nullable=True),
        sa.Column("missed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "schedule_slots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("schedule_id", sa.Integer, sa.ForeignKey("schedules.id", ondelete="CASCADE"), nullable=False),
        sa.Column("slot_epoch", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("flow_run_id", sa.String(36), nullable=True),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.UniqueConstraint("schedule_id", "slot_epoch"),
    )
    op.create_index("ix_schedule_slots_state", "schedule_slots", ["schedule_id", "state"])


def downgrade() -> None:
    op.drop_table("schedule_slots")
    op.drop_table("schedules")
