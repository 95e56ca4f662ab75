"""Alembic environment. gql_wallet.migrate runs it on a connection it already holds, inside a
transaction that serialises concurrent migrators (BEGIN IMMEDIATE on SQLite, an advisory lock on
PostgreSQL), so several processes starting together migrate once."""

from alembic import context

from gql_wallet.models import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
