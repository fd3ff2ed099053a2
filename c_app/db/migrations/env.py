"""Alembic environment: runs on the connection handed over by c_app.db.migrate."""

from alembic import context

from c_app.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through c_app.db.migrate.upgrade or `c-app migrate`")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
