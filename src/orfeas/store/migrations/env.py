"""Alembic's entry point: runs the migrations on the connection that `orfeas.store.migrate` hands over."""

from alembic import context

from orfeas.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():  # inside the caller's transaction this is a no-op: the caller commits
    context.run_migrations()
