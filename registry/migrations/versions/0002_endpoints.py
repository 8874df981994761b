"""Endpoints as the console has them: descriptions, public or token-protected, statuses; stages with
their instance type and count, node autoscaler and gateway status; stage resources (the model versions
a stage serves, with their allocation, pods and pod autoscaler); the serving history, an audit
record that outlives deletions; and endpoint tokens (kept as SHA-256 digests, with an expiry). A stage's model moves to a stage resource.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# Columns are added and dropped in place (SQLite >= 3.35 drops columns itself). Alembic's batch mode
# would rebuild a table by copying it and dropping the old one, and with foreign keys on, dropping
# `endpoints` deletes every stage that refers to it (ON DELETE CASCADE).


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("description", sa.Text, nullable=False, server_default=""))
    op.add_column("endpoints", sa.Column("public", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("endpoints", sa.Column("status", sa.String(32), nullable=False, server_default="ACTIVE"))
    op.add_column("endpoints", sa.Column("reason", sa.Text, nullable=False, server_default=""))
    for column in (sa.Column("description", sa.Text, nullable=False, server_default=""),
                   sa.Column("instance_type", sa.String(64), nullable=False, server_default="local"),
                   sa.Column("instance_count", sa.Integer, nullable=False, server_default="1"),
                   sa.Column("node_autoscaler", sa.JSON, nullable=False, server_default="{}"),
                   sa.Column("status", sa.String(32), nullable=False, server_default="ACTIVE"),
                   sa.Column("gateway_status", sa.String(40), nullable=False, server_default="ACTIVE"),
                   sa.Column("reason", sa.Text, nullable=False, server_default=""),
                   sa.Column("created_at", sa.DateTime(timezone=True), nullable=True)):
        op.add_column("endpoint_stages", column)
    op.create_table(
        "stage_resources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("stage_id", sa.Integer, sa.ForeignKey("endpoint_stages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("cpu", sa.Float, nullable=False, server_default="1"),
        sa.Column("memory", sa.String(16), nullable=False, server_default="1Gi"),
        sa.Column("gpu", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pods", sa.Integer, nullable=False, server_default="1"),
        sa.Column("pod_autoscaler", sa.JSON, nullable=False, server_default="{}"),
        sa.Column("status", sa.String(32), nullable=False, server_default="ACTIVE"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_stage_resources_model", "stage_resources", ["model_name", "model_version"])
    op.execute("INSERT INTO stage_resources (stage_id, model_name, model_version) "
               "SELECT id, model_name, model_version FROM endpoint_stages")
    op.drop_index("ix_endpoint_stages_model", "endpoint_stages")
    op.drop_column("endpoint_stages", "model_name")
    op.drop_column("endpoint_stages", "model_version")
    op.create_table(
        "serving_history",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint", sa.String(50), nullable=False),
        sa.Column("stage", sa.String(50), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_serving_history_endpoint", "serving_history", ["endpoint", "stage"])
    op.create_table(
        "endpoint_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint_id", sa.Integer, sa.ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("endpoint_tokens")
    op.drop_index("ix_serving_history_endpoint", "serving_history")
    op.drop_table("serving_history")
    op.add_column("endpoint_stages", sa.Column("model_name", sa.String(255), nullable=False, server_default=""))
    op.add_column("endpoint_stages", sa.Column("model_version", sa.String(32), nullable=False, server_default=""))
    op.execute("UPDATE endpoint_stages SET model_name = (SELECT model_name FROM stage_resources r WHERE "
               "r.stage_id = endpoint_stages.id ORDER BY r.id LIMIT 1), model_version = (SELECT model_version "
               "FROM stage_resources r WHERE r.stage_id = endpoint_stages.id ORDER BY r.id LIMIT 1) "
               "WHERE EXISTS (SELECT 1 FROM stage_resources r WHERE r.stage_id = endpoint_stages.id)")
    op.drop_index("ix_stage_resources_model", "stage_resources")
    op.drop_table("stage_resources")
    for column in ("description", "instance_type", "instance_count", "node_autoscaler", "status",
                   "gateway_status", "reason", "created_at"):
        op.drop_column("endpoint_stages", column)
    op.create_index("ix_endpoint_stages_model", "endpoint_stages", ["model_name", "model_version"])
    for column in ("description", "public", "status", "reason"):
        op.drop_column("endpoints", column)
