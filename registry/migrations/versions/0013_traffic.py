"""Traffic shares between stages and progressive promotions (issue 29): a stage's weight (percent of
the endpoint's default traffic) and shadow share, the share each serving-history record served, the
endpoint's promotion policy, the promotions themselves, and each gateway replica's live counts of the
stages that share traffic (what the live gates judge).

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint_stages", recreate="never") as batch:
        batch.add_column(sa.Column("weight", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("shadow", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("endpoints", recreate="never") as batch:
        batch.add_column(sa.Column("promotion_policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("serving_history", recreate="never") as batch:
        batch.add_column(sa.Column("share", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("shadow", sa.Integer(), nullable=True))
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint", sa.String(50), nullable=False),
        sa.Column("stage", sa.String(50), nullable=False),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("phase", sa.String(32), nullable=False, server_default="evaluation"),
        sa.Column("gates", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("flow_run_id", sa.String(36), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_promotions_endpoint", "promotions", ["endpoint"])
    op.create_table(
        "live_counts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("stage", sa.String(255), nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("gateway", "endpoint", "stage"),
    )


def downgrade() -> None:
    op.drop_table("live_counts")
    op.drop_index("ix_promotions_endpoint", "promotions")
    op.drop_table("promotions")
    with op.batch_alter_table("serving_history", recreate="never") as batch:
        batch.drop_column("shadow")
        batch.drop_column("share")
    with op.batch_alter_table("endpoints", recreate="never") as batch:
        batch.drop_column("promotion_policy")
    with op.batch_alter_table("endpoint_stages", recreate="never") as batch:
        batch.drop_column("shadow")
        batch.drop_column("weight")
