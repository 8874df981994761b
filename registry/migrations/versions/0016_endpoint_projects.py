"""Endpoints belong to a project (`default` for those made before); a project's request rate limits at the
gateway: for all its endpoints' calls, and for each caller's key or token.

Revision ID: 0016
Revises: 0015
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints", recreate="never") as batch:
        batch.add_column(sa.Column("project", sa.String(40), nullable=False, server_default="default"))
    op.create_index("ix_endpoints_project", "endpoints", ["project"])
    with op.batch_alter_table("projects", recreate="never") as batch:
        batch.add_column(sa.Column("rate_limit", sa.Float, nullable=True))
        batch.add_column(sa.Column("key_rate_limit", sa.Float, nullable=True))


def downgrade() -> None:
    # in place: a batch copy of `projects` or `endpoints` on SQLite would drop the old table, and with it
    # (ON DELETE CASCADE) every member of every project, every stage, resource and token of every endpoint
    op.execute("ALTER TABLE projects DROP COLUMN key_rate_limit")
    op.execute("ALTER TABLE projects DROP COLUMN rate_limit")
    op.drop_index("ix_endpoints_project", "endpoints")
    op.execute("ALTER TABLE endpoints DROP COLUMN project")
