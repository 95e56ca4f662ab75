"""credit blocks: every credit is a block; entries say which blocks they touched

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 19:00:00.000000

- `credit_blocks`: one per TOP_UP or GRANT entry (its source), with its category, priority,
  expiry, the burn-down sort key the ledger service computes, its amount and what remains.
- `credit_allocations`: how much of each block an entry spent or restored, in order.
- `wallets.next_expiry_at`: the soonest expiry among a wallet's blocks with credits left, so that
  a read sees in its own SELECT whether an expiry is due (by the database's clock).
- `wallet_transactions.reverses_seq`: a REFUND's charge, a REVERSAL's top-up or grant.
- The entry types are no longer listed in a CHECK constraint: the ledger service is the one
  place that defines them. SQLite drops the constraint by rewriting the table's definition in
  its schema (the procedure SQLite documents for removing a CHECK: the stored rows do not change).

Every existing wallet with a TOP_UP becomes one PAID block of its balance (0 included), never
expiring, priority 50, whose source is the wallet's first TOP_UP. Its history is not changed, and
`remaining == amount + sum(allocations)` holds (it has none). Entries older than the blocks have
no allocations: a refund or reversal of one uses the wallet's oldest block, this one.
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from gql_wallet._migrations import sql_file, sql_statements

from gql_wallet.ledger.credits import CreditCategory, burn_key

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TYPE_CHECK = "CONSTRAINT ck_wallet_tx_type CHECK (type IN ('TOP_UP', 'CHARGE')),"
_BACKFILL_PRIORITY = 50
_PREVIOUS_FUNCTION = (
    "gql_wallet_balance_change(uuid, text, text, text, text, text, bigint, bigint, bigint, text, "
    "text, boolean, uuid, uuid, timestamptz, text, text, text)"
)


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "credit_blocks",
        sa.Column("seq", _SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("wallet_seq", _SEQ, nullable=False),
        sa.Column("source_seq", _SEQ, nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("burn_key", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount >= 0", name="ck_credit_blocks_amount_non_negative"),
        sa.CheckConstraint("remaining >= 0", name="ck_credit_blocks_remaining_non_negative"),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"]),
        sa.ForeignKeyConstraint(["wallet_seq"], ["wallets.seq"]),
        sa.ForeignKeyConstraint(["source_seq"], ["wallet_transactions.seq"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("source_seq"),
    )
    op.create_index(
        "ix_credit_blocks_burn",
        "credit_blocks",
        ["wallet_seq", "burn_key", "seq"],
        unique=False,
        postgresql_where=sa.text("remaining > 0"),
        sqlite_where=sa.text("remaining > 0"),
    )
    # Every block of a wallet in burn-down order, spent ones included: credits(...) pages.
    op.create_index(
        "ix_credit_blocks_wallet", "credit_blocks", ["wallet_seq", "burn_key", "seq"], unique=False
    )
    op.create_table(
        "credit_allocations",
        sa.Column("entry_seq", _SEQ, nullable=False),
        sa.Column("ordinal", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("block_seq", _SEQ, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount <> 0", name="ck_credit_allocations_amount_nonzero"),
        sa.ForeignKeyConstraint(["entry_seq"], ["wallet_transactions.seq"]),
        sa.ForeignKeyConstraint(["block_seq"], ["credit_blocks.seq"]),
        sa.PrimaryKeyConstraint("entry_seq", "ordinal"),
    )
    op.create_index(
        "ix_credit_allocations_block",
        "credit_allocations",
        ["block_seq", "entry_seq"],
        unique=False,
    )
    op.add_column("wallets", sa.Column("next_expiry_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_wallets_next_expiry_at",
        "wallets",
        ["next_expiry_at"],
        unique=False,
        postgresql_where=sa.text("next_expiry_at IS NOT NULL"),
        sqlite_where=sa.text("next_expiry_at IS NOT NULL"),
    )
    if bind.dialect.name == "postgresql":
        op.drop_constraint("ck_wallet_tx_type", "wallet_transactions", type_="check")
    else:
        _sqlite_set_type_check(_TYPE_CHECK, "")
    # No foreign key: the store writes it from the entry it has just read under the wallet's
    # lock, and without one SQLite can drop the column again (downgrade).
    op.add_column("wallet_transactions", sa.Column("reverses_seq", _SEQ, nullable=True))
    op.create_index(
        "ix_wallet_transactions_reverses_seq",
        "wallet_transactions",
        ["reverses_seq"],
        unique=False,
        postgresql_where=sa.text("reverses_seq IS NOT NULL"),
        sqlite_where=sa.text("reverses_seq IS NOT NULL"),
    )
    _backfill_blocks()
    if bind.dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {_PREVIOUS_FUNCTION}")
        for statement in sql_statements("gql_wallet_ledger.v1.sql"):
            op.execute(statement)


def _sqlite_set_type_check(old: str, new: str) -> None:
    """Replace `old` by `new` in the table's definition, which SQLite keeps as text; the rows
    stay as they are (safe for removing a CHECK, and for adding one that every row meets)."""
    bind = op.get_bind()
    (definition,) = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'wallet_transactions'"
    ).one()
    anchor = "CONSTRAINT ck_wallet_tx_amount_nonzero"
    if (old or anchor) not in definition:
        raise RuntimeError("wallet_transactions is not as this revision expects")
    changed = definition.replace(old, new) if old else definition.replace(anchor, new + anchor)
    (version,) = bind.exec_driver_sql("PRAGMA schema_version").one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'wallet_transactions'",
        (changed,),
    )
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def _backfill_blocks() -> None:
    bind = op.get_bind()
    first_top_ups = bind.execute(
        sa.text(
            "SELECT w.seq AS wallet_seq, w.organization_id, w.balance, t.seq AS source_seq, "
            "t.created_at FROM wallets AS w JOIN wallet_transactions AS t ON t.seq = "
            "(SELECT min(f.seq) FROM wallet_transactions AS f "
            " WHERE f.wallet_seq = w.seq AND f.type = 'TOP_UP') "
            "ORDER BY w.seq"
        ).columns(organization_id=sa.Uuid(), created_at=sa.DateTime(timezone=True))
    ).all()
    blocks = sa.table(
        "credit_blocks",
        sa.column("id", sa.Uuid()),
        sa.column("organization_id", sa.Uuid()),
        sa.column("wallet_seq", _SEQ),
        sa.column("source_seq", _SEQ),
        sa.column("category", sa.String()),
        sa.column("priority", sa.Integer()),
        sa.column("expires_at", sa.DateTime(timezone=True)),
        sa.column("burn_key", sa.String()),
        sa.column("amount", sa.BigInteger()),
        sa.column("remaining", sa.BigInteger()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    key = burn_key(_BACKFILL_PRIORITY, None, CreditCategory.PAID)
    for start in range(0, len(first_top_ups), 5_000):
        bind.execute(
            blocks.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "organization_id": row.organization_id,
                    "wallet_seq": row.wallet_seq,
                    "source_seq": row.source_seq,
                    "category": CreditCategory.PAID.value,
                    "priority": _BACKFILL_PRIORITY,
                    "expires_at": None,
                    "burn_key": key,
                    "amount": row.balance,
                    "remaining": row.balance,
                    "created_at": row.created_at,
                }
                for row in first_top_ups[start : start + 5_000]
            ],
        )


def downgrade() -> None:
    bind = op.get_bind()
    newer = bind.exec_driver_sql(
        "SELECT count(*) FROM wallet_transactions WHERE type NOT IN ('TOP_UP', 'CHARGE')"
    ).scalar_one()
    if newer:
        raise RuntimeError(f"{newer} ledger entries of types that revision 0006 cannot hold")
    if bind.dialect.name == "postgresql":
        for statement in sql_statements("gql_wallet_ledger.v1.down.sql"):
            op.execute(statement)
        op.execute(sql_file("gql_wallet_balance_change.v3.sql"))
    op.drop_index("ix_wallet_transactions_reverses_seq", table_name="wallet_transactions")
    op.execute("ALTER TABLE wallet_transactions DROP COLUMN reverses_seq")
    if bind.dialect.name == "postgresql":
        op.create_check_constraint(
            "ck_wallet_tx_type", "wallet_transactions", "type IN ('TOP_UP', 'CHARGE')"
        )
    else:
        _sqlite_set_type_check("", _TYPE_CHECK)
    op.drop_index("ix_wallets_next_expiry_at", table_name="wallets")
    op.execute("ALTER TABLE wallets DROP COLUMN next_expiry_at")
    op.drop_index("ix_credit_allocations_block", table_name="credit_allocations")
    op.drop_table("credit_allocations")
    op.drop_index("ix_credit_blocks_wallet", table_name="credit_blocks")
    op.drop_index("ix_credit_blocks_burn", table_name="credit_blocks")
    op.drop_table("credit_blocks")
