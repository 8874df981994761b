"""Where the gateway reaches a stage resource that runs on a cluster (its Service), in the catalog, so
that every gateway replica routes to it without files under a home.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stage_resources") as batch:
        batch.add_column(sa.Column("service_url", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stage_resources") as batch:
        batch.drop_column("service_url")
