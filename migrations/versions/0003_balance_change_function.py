"""balance change in one round trip on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 08:20:00.000000

A top-up or charge is one transaction of five statements (claim the idempotency key, the
conditional balance UPDATE, the ledger INSERT, the outcome record, the NOTIFY). Sent one by one
from Python, each is a round trip to the server plus BEGIN and COMMIT. This function runs the
same statements, in the same order and with the same lock order (key, then wallet), inside the
server, so gql_wallet sends one statement in autocommit mode: one round trip, one implicit
transaction. gql_wallet/ledger.py stays the reference for what each step means (and runs the
steps itself on SQLite); tests run both paths against the same expectations.

Outcomes (the `outcome` column):
- applied: the wallet after the change and its new ledger entry are returned.
- refused: the change would leave 0..2^53-1 (or, for a charge, there is no wallet); the refusal
  is recorded on the key so that it replays, nothing else is written, the current wallet (if
  any) is returned with the refusal's code.
- taken: an earlier write holds the key (the claim waited for it to commit or roll back);
  nothing was written, the caller replays that write's outcome.
"""

from collections.abc import Sequence

from alembic import op
from gql_wallet._migrations import sql_file

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = sql_file("gql_wallet_balance_change.v1.sql")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION gql_wallet_balance_change(uuid, text, text, text, text, text, bigint, "
            "text, text, boolean, uuid, uuid, timestamptz, text, text, text, text, text)"
        )
