"""A RAG's query service on a cluster: the URLs of its Services (`query`, and its own LLM's `llm`), which every
gateway replica routes by, as a stage resource's `service_url` (issue 70). Only adds a nullable column: release
0020's code runs on it.

Revision ID: 0021
Revises: 0020
"""
import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None
COMPATIBLE_FROM = "0020"


def upgrade() -> None:
    with op.batch_alter_table("rags", recreate="never") as batch:
        batch.add_column(sa.Column("service_urls", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE rags DROP COLUMN service_urls")
