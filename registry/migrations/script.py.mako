"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
# Only adds (tables, nullable columns, indexes)? Then the previous release's pods still run on it during a
# rollout: say so (registry/catalog.py `compatible_from`). Drops, renames or tightens what older code reads?
# Leave it out, and ship it one release after the code stopped reading it (expand, then contract).
# COMPATIBLE_FROM = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
