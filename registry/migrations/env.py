"""Alembic environment: runs on the connection that `Catalog.upgrade` hands over.

The catalog keeps its revision in `mlyard_alembic_version`: Optuna's studies share the database and
keep theirs in `alembic_version`.
"""

from alembic import context

from mlyard.registry.catalog import VERSION_TABLE
from mlyard.registry.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
