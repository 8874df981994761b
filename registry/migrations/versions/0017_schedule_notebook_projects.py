"""Schedules and notebooks belong to a project and to the user who made them (`default` and nobody for
those made before): a schedule's runs are that project's and that user's, a notebook's JupyterLab answers
its user alone (and admins).

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TABLES = ("schedules", "notebooks")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("project", sa.String(40), nullable=False, server_default="default"))
            batch.add_column(sa.Column("owner", sa.String(80), nullable=False, server_default=""))
        op.create_index(f"ix_{table}_project", table, ["project"])


def downgrade() -> None:
    # in place: a batch copy of `schedules` on SQLite would drop the old table, and with it (ON DELETE
    # CASCADE) every slot of every schedule
    for table in TABLES:
        op.drop_index(f"ix_{table}_project", table)
        op.execute(f"ALTER TABLE {table} DROP COLUMN owner")
        op.execute(f"ALTER TABLE {table} DROP COLUMN project")
