"""Training templates and the endpoint stages that pin model versions.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_templates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "endpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "endpoint_stages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint_id", sa.Integer, sa.ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.UniqueConstraint("endpoint_id", "name"),
    )
    op.create_index("ix_endpoint_stages_model", "endpoint_stages", ["model_name", "model_version"])


def downgrade() -> None:
    op.drop_index("ix_endpoint_stages_model", "endpoint_stages")
    op.drop_table("endpoint_stages")
    op.drop_table("endpoints")
    op.drop_table("training_templates")
