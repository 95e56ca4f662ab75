"""balance change function: codes and bounds from the ledger service, no messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 02:30:00.000000

The ledger service (gql_wallet/ledger.py) owns every rule and message; the store only carries
them out. So the function no longer takes refusal messages (the service derives a refusal's
message from its code, on the first answer and on every replay alike), and the balance range a
change must stay in comes in as `p_floor` .. `p_ceiling` instead of being written into the SQL.
Outcomes and statements are otherwise those of revision 0004.

The old signature is dropped: processes still running the previous release fail their balance
changes until they are restarted (a client's retry with the same idempotency key is safe).
"""

from collections.abc import Sequence

from alembic import op
from gql_wallet._migrations import sql_file

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PREVIOUS_SIGNATURE = (
    "gql_wallet_balance_change(uuid, text, text, text, text, text, bigint, text, text, boolean, "
    "uuid, uuid, timestamptz, text, text, text, text, text)"
)
_SIGNATURE = (
    "gql_wallet_balance_change(uuid, text, text, text, text, text, bigint, bigint, bigint, text, "
    "text, boolean, uuid, uuid, timestamptz, text, text, text)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {_PREVIOUS_SIGNATURE}")
        op.execute(sql_file("gql_wallet_balance_change.v3.sql"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {_SIGNATURE}")
        op.execute(sql_file("gql_wallet_balance_change.v2.sql"))
