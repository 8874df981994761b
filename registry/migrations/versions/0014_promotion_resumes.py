"""How many times a promotion was taken up by a new run after its own ended without a verdict
(tasks/promotion_watch.py): past a limit it is rolled back instead of resumed again.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("promotions", recreate="never") as batch:
        batch.add_column(sa.Column("resumes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.drop_column("resumes")
