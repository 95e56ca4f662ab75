"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 04:42:25.310958
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_keys_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "wallets",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("balance <= 9007199254740991", name="ck_wallets_balance_safe_int"),
        sa.CheckConstraint("balance >= 0", name="ck_wallets_balance_non_negative"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("organization_id", "customer_id", "currency", name="uq_wallets_owner"),
    )
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.create_index("ix_wallets_org_seq", ["organization_id", "seq"], unique=False)

    op.create_table(
        "wallet_transactions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column(
            "wallet_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("type IN ('TOP_UP', 'CHARGE')", name="ck_wallet_tx_type"),
        sa.CheckConstraint("amount <> 0", name="ck_wallet_tx_amount_nonzero"),
        sa.CheckConstraint("balance_after >= 0", name="ck_wallet_tx_balance_after"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["wallet_seq"],
            ["wallets.seq"],
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("organization_id", "idempotency_key", name="uq_wallet_tx_key"),
    )
    with op.batch_alter_table("wallet_transactions", schema=None) as batch_op:
        batch_op.create_index("ix_wallet_tx_wallet_seq", ["wallet_seq", "seq"], unique=False)

    op.create_table(
        "idempotency_keys",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column(
            "transaction_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["transaction_seq"],
            ["wallet_transactions.seq"],
        ),
        sa.PrimaryKeyConstraint("organization_id", "key"),
    )
    _create_append_only_triggers()


# The ledger is append-only, enforced by the database itself whatever code talks to it.
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER wallet_transactions_no_{op_name.lower()} BEFORE {op_name} "
    "ON wallet_transactions BEGIN "
    "SELECT RAISE(ABORT, 'wallet_transactions is append-only'); END"
    for op_name in ("UPDATE", "DELETE")
]
_POSTGRESQL_TRIGGERS = [
    "CREATE FUNCTION wallet_transactions_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'wallet_transactions is append-only'; END $$",
    "CREATE TRIGGER wallet_transactions_append_only BEFORE UPDATE OR DELETE "
    "ON wallet_transactions FOR EACH ROW EXECUTE FUNCTION wallet_transactions_append_only()",
    # TRUNCATE bypasses row triggers; refuse it too.
    "CREATE TRIGGER wallet_transactions_no_truncate BEFORE TRUNCATE "
    "ON wallet_transactions FOR EACH STATEMENT EXECUTE FUNCTION wallet_transactions_append_only()",
]


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    for statement in _POSTGRESQL_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("wallet_transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_wallet_tx_wallet_seq")

    op.drop_table("wallet_transactions")
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.drop_index("ix_wallets_org_seq")

    op.drop_table("wallets")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_organization_id"))

    op.drop_table("api_keys")
    op.drop_table("organizations")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION wallet_transactions_append_only()")
