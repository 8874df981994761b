"""A token of an endpoint, or a RAG that asks it (`rag:NAME`), can have a budget of tokens a day (prompt and
completion tokens of generative answers together); the gateway answers 429 once it is spent. A stage
resource can name a runtime variant (an inference engine, issue 55).

Revision ID: 0020
Revises: 0019
"""
import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint_tokens", recreate="never") as batch:
        batch.add_column(sa.Column("daily_tokens", sa.Integer(), nullable=True))
    with op.batch_alter_table("endpoints", recreate="never") as batch:
        batch.add_column(sa.Column("caller_budgets", sa.JSON(), nullable=True))
    with op.batch_alter_table("stage_resources", recreate="never") as batch:
        batch.add_column(sa.Column("runtime", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE endpoint_tokens DROP COLUMN daily_tokens")
    op.execute("ALTER TABLE endpoints DROP COLUMN caller_budgets")
    op.execute("ALTER TABLE stage_resources DROP COLUMN runtime")
