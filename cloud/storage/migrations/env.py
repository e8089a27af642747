"""Alembic environment: runs on the connection that ``wafercore.sql.migrate`` passes in."""

from alembic import context

from cloud.storage.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
