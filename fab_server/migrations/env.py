"""Alembic environment: runs on the connection that ``fab_server.db.migrate`` passes in."""

from alembic import context

from fab_server.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
