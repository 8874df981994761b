"""Teams: users and their API keys, projects and their members' roles, the append-only audit trail; the
project of training templates (`default` for those made before).

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

SCOPED = ("training_templates",)  # each kind gets its column when its every path checks it


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(12), primary_key=True),
        sa.Column("user", sa.String(40), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "projects",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("gpus", sa.Integer, nullable=True),
        sa.Column("cpus", sa.Float, nullable=True),
        sa.Column("max_runs", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "project_members",
        sa.Column("project", sa.String(40), sa.ForeignKey("projects.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("user", sa.String(40), sa.ForeignKey("users.name", ondelete="CASCADE"), primary_key=True,
                  index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "audit_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("user", sa.String(80), nullable=False),
        sa.Column("project", sa.String(40), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("source", sa.String(80), nullable=False),
    )
    op.create_index("ix_audit_project_at", "audit_records", ["project", "at"])
    op.create_index("ix_audit_user_at", "audit_records", ["user", "at"])
    projects = sa.table("projects", sa.column("name"), sa.column("description"), sa.column("created_at"))
    op.execute(projects.insert().values(name="default", description="the stack owner's own, and everything made "
                                        "before projects", created_at=sa.func.now()))
    for table in SCOPED:
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("project", sa.String(40), nullable=False, server_default="default"))
        op.create_index(f"ix_{table}_project", table, ["project"])


def downgrade() -> None:
    for table in SCOPED:
        op.drop_index(f"ix_{table}_project", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("project")
    for table in ("audit_records", "project_members", "projects", "api_keys", "users"):
        op.drop_table(table)
