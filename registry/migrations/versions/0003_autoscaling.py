"""A stage's autoscaling rules (Backend.AI's: metric source and name, comparator, threshold, step,
min/max replicas, cooldown), kept as JSON with the stage.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoint_stages", sa.Column("autoscaling_rules", sa.JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    op.drop_column("endpoint_stages", "autoscaling_rules")
