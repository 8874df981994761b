"""A stage's replica cap (AI Toolkit's maximumInstanceCount): the most replicas any of its resources
runs, however it is scaled; NULL for no cap of its own.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoint_stages", sa.Column("max_replicas", sa.Integer, nullable=True))


def downgrade() -> None:
    op.drop_column("endpoint_stages", "max_replicas")
