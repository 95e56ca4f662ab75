"""hold writes in place: wallets.next_expiry_at as a lower bound on PostgreSQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 01:40:00.000000

No table changes. On PostgreSQL the ledger functions are replaced whole by
gql_wallet_ledger.v3.sql: a charge, a new hold and a capture keep the wallet's soonest-expiry
bound instead of recomputing it, so that their update of the wallet is HOT; a new hold takes
the one-statement path a charge takes; a capture finds its hold by primary key. SQLite is
untouched.
"""

from collections.abc import Sequence

from alembic import op
from gql_wallet._migrations import sql_statements

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in sql_statements("gql_wallet_ledger.v2.down.sql"):
            op.execute(statement)
        for statement in sql_statements("gql_wallet_ledger.v3.sql"):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in sql_statements("gql_wallet_ledger.v3.down.sql"):
            op.execute(statement)
        for statement in sql_statements("gql_wallet_ledger.v2.sql"):
            op.execute(statement)
