"""Images and registry accounts belong to a project (`default` for those made before): a project's runs,
templates and notebooks name its images alone, and pull with its accounts alone.

Revision ID: 0018
Revises: 0017
"""
import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLES = ("registry_accounts", "images")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("project", sa.String(40), nullable=False, server_default="default"))
        op.create_index(f"ix_{table}_project", table, ["project"])


def downgrade() -> None:
    # in place: a batch copy of `registry_accounts` on SQLite would break the images' foreign key to it
    for table in TABLES:
        op.drop_index(f"ix_{table}_project", table)
        op.execute(f"ALTER TABLE {table} DROP COLUMN project")
