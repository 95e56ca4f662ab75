"""metadata: the caller's metadata on every ledger entry and hold

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:20:00.000000

- `wallet_transactions.metadata`, `wallet_holds.metadata`: canonical JSON of string keys to
  string values, '{}' for none (so every existing row has none). A plain ADD COLUMN with a
  constant default: no table rewrite on PostgreSQL, and on SQLite the tables (and their
  append-only and outbox triggers) stay as they are.
- PostgreSQL: the ledger functions are replaced whole by gql_wallet_ledger.v4.sql, whose writes
  take the metadata.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from gql_wallet._migrations import sql_statements

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("wallet_transactions", "wallet_holds")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(table, sa.Column("metadata", sa.Text(), nullable=False, server_default="{}"))
    if op.get_bind().dialect.name == "postgresql":
        for statement in sql_statements("gql_wallet_ledger.v3.down.sql"):
            op.execute(statement)
        for statement in sql_statements("gql_wallet_ledger.v4.sql"):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in sql_statements("gql_wallet_ledger.v4.down.sql"):
            op.execute(statement)
    for table in _TABLES:
        # Plain SQL: SQLite drops a column in place (3.35+), where a batch operation would
        # rebuild the table without its triggers.
        op.execute(f"ALTER TABLE {table} DROP COLUMN metadata")
    if op.get_bind().dialect.name == "postgresql":
        for statement in sql_statements("gql_wallet_ledger.v3.sql"):
            op.execute(statement)
