"""Pipelines and RAGs belong to a project (`default` for those made before): a project's members upload,
run, ingest and ask its own alone.

Revision ID: 0019
Revises: 0018
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

TABLES = ("pipelines", "rags")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("project", sa.String(40), nullable=False, server_default="default"))
        op.create_index(f"ix_{table}_project", table, ["project"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_project", table)
        op.execute(f"ALTER TABLE {table} DROP COLUMN project")
