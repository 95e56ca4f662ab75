"""hold writes in place: wallets.next_expiry_at as a lower bound on PostgreSQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 01:40:00.000000

No table changes. On PostgreSQL, gql_wallet_ledger.v3.sql replaces four ledger functions
(expire_due, balance_change, create_hold, resolve_hold): a charge, a new hold and a capture keep
the wallet's soonest-expiry bound instead of recomputing it, so that their update of the wallet
is HOT; a new hold takes the one-statement path a charge takes; a capture finds its hold by
primary key. The downgrade puts v2's four back. SQLite is untouched.
"""

import re
from collections.abc import Sequence

from alembic import op
from gql_wallet._migrations import sql_statements

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CREATE = re.compile(r"^CREATE (OR REPLACE )?FUNCTION (\w+)\(", re.MULTILINE)


def _replaced(version: str) -> list[str]:
    """The statements of `version` that (re)create a function v3 replaces, as replacements."""
    names = {
        m.group(2) for s in sql_statements("gql_wallet_ledger.v3.sql") for m in _CREATE.finditer(s)
    }
    chosen = []
    for statement in sql_statements(version):
        match = _CREATE.search(statement)
        if match is not None and match.group(2) in names:
            chosen.append(_CREATE.sub(r"CREATE OR REPLACE FUNCTION \2(", statement, count=1))
    return chosen


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _replaced("gql_wallet_ledger.v3.sql"):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _replaced("gql_wallet_ledger.v2.sql"):
            op.execute(statement)
