"""The gateway's per-minute statistics in the catalog, so that every gateway replica adds to one record.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoint_stat_minutes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("minute", sa.BigInteger, nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("stage", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_index("ix_endpoint_stat_minutes_minute", "endpoint_stat_minutes", ["minute", "endpoint"])


def downgrade() -> None:
    op.drop_table("endpoint_stat_minutes")
