"""holds: funds reserved from credit blocks, captured or voided later

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 22:30:00.000000

- `wallet_holds`: one per createHold, OPEN until captured, voided or expired.
- `hold_reservations`: how much of each credit block an open hold reserves.
- `credit_blocks.held`: what open holds reserve from the block (`remaining - held` is available).
- `wallets.held_balance`: what the wallet's open holds reserve (`balance - held_balance` is the
  available balance); `wallets.next_expiry_at` now also covers open holds.
- `idempotency_keys.hold_seq`: the hold a hold write created or answered about.
- `wallet_transactions.held_after`: the wallet's held balance right after the entry, so that an
  entry tells the wallet's whole state then (a live event shows it as it was).

Existing rows get 0 held: there are no holds yet. On PostgreSQL the ledger functions are
replaced whole by gql_wallet_ledger.v2.sql.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from gql_wallet._migrations import sql_statements

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        # They take and return wallets rows, whose type changes below.
        for statement in sql_statements("gql_wallet_ledger.v1.down.sql"):
            op.execute(statement)
    op.add_column(
        "wallets",
        sa.Column("held_balance", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "credit_blocks", sa.Column("held", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.create_table(
        "wallet_holds",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("wallet_seq", _SEQ, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured_amount", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("capture_seq", _SEQ, nullable=True),
        sa.CheckConstraint("amount > 0", name="ck_wallet_holds_amount_positive"),
        sa.CheckConstraint(
            "captured_amount >= 0 AND captured_amount <= amount",
            name="ck_wallet_holds_captured_within_amount",
        ),
        sa.ForeignKeyConstraint(["wallet_seq"], ["wallets.seq"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index(
        "ix_wallet_holds_wallet_seq", "wallet_holds", ["wallet_seq", "seq"], unique=False
    )
    op.create_index(
        "ix_wallet_holds_open",
        "wallet_holds",
        ["wallet_seq", "expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'OPEN'"),
        sqlite_where=sa.text("status = 'OPEN'"),
    )
    op.create_table(
        "hold_reservations",
        sa.Column("hold_seq", _SEQ, nullable=False),
        sa.Column("ordinal", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("block_seq", _SEQ, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_hold_reservations_amount_positive"),
        sa.ForeignKeyConstraint(["hold_seq"], ["wallet_holds.seq"]),
        sa.ForeignKeyConstraint(["block_seq"], ["credit_blocks.seq"]),
        sa.PrimaryKeyConstraint("hold_seq", "ordinal"),
    )
    op.add_column("idempotency_keys", sa.Column("hold_seq", _SEQ, nullable=True))
    op.add_column(
        "wallet_transactions",
        sa.Column("held_after", sa.BigInteger(), nullable=False, server_default="0"),
    )
    if postgresql:
        for statement in sql_statements("gql_wallet_ledger.v2.sql"):
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    newer = bind.exec_driver_sql(
        "SELECT count(*) FROM wallet_transactions WHERE type = 'CAPTURE'"
    ).scalar_one()
    if newer:
        raise RuntimeError(f"{newer} CAPTURE entries, which revision 0007 cannot explain")
    reserving = bind.exec_driver_sql(
        "SELECT count(*) FROM wallet_holds WHERE status = 'OPEN'"
    ).scalar_one()
    if reserving:
        raise RuntimeError(f"{reserving} open holds, whose funds revision 0007 would free")
    postgresql = bind.dialect.name == "postgresql"
    if postgresql:
        for statement in sql_statements("gql_wallet_ledger.v2.down.sql"):
            op.execute(statement)
    op.execute("ALTER TABLE wallet_transactions DROP COLUMN held_after")
    op.execute("ALTER TABLE idempotency_keys DROP COLUMN hold_seq")
    op.drop_table("hold_reservations")
    op.drop_index("ix_wallet_holds_open", table_name="wallet_holds")
    op.drop_index("ix_wallet_holds_wallet_seq", table_name="wallet_holds")
    op.drop_table("wallet_holds")
    op.execute("ALTER TABLE credit_blocks DROP COLUMN held")
    op.execute("ALTER TABLE wallets DROP COLUMN held_balance")
    if postgresql:
        for statement in sql_statements("gql_wallet_ledger.v1.sql"):
            op.execute(statement)
