"""An endpoint's own limit on a request body (the gateway answers 413 above it); unset: the platform's.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("max_request_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite >= 3.35): a batch copy of the table would drop the old
    # one, and with it (ON DELETE CASCADE) every stage and token of every endpoint
    with op.batch_alter_table("endpoints", recreate="never") as batch:
        batch.drop_column("max_request_bytes")
