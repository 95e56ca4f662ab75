"""idempotency keys keep only a refusal's code

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 04:10:00.000000

Since revision 0005 the ledger service derives a refusal's message from its code, on the first
answer and on every replay, so `error_message` is written and read by nothing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_column("idempotency_keys", "error_message")


def downgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("error_message", sa.Text(), nullable=True))
